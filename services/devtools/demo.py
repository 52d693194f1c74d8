"""The whole system on one machine, no cluster: generate, train, stream, score, report.

1. Real protocol implementations (TLS 1.2/1.3, HTTP, DNS, SSH, SMTP, FTP, WebSocket, gRPC, Modbus)
   talk over loopback; their first bytes become labelled training heads.
2. A model is trained on them and exported as version 1 of a model repository.
3. Fresh traffic of the same protocols, plus anomalies (SSH on 443, HTTP on tcp/53, TLS on 22,
   random bytes on 80) and any captures you give, is replayed through the real pipeline: a local
   single-node Kafka broker (fetched with Maven on first use), the collector, featurizer and
   scorer services as separate processes. Without Java the same records are scored in-process
   by the same code instead, and the demo says so.
4. The alerts are printed, and a report with plots is written to --out-dir.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headbits.common.avro import write_heads_file
from headbits.common.records import PayloadHead
from headbits.common.settings import add_settings_arguments, setting, settings_from_args


@dataclass(frozen=True)
class DemoSettings:
    out_dir: Path = setting(Path("demo-output"), "where models, report and logs go")
    sessions: int = setting(60, "training sessions per protocol")
    live_sessions: int = setting(20, "sessions per protocol in the replayed traffic")
    anomalies: int = setting(12, "anomalous sessions in the replayed traffic")
    n: int = setting(16, "payload bytes per direction the model reads")
    target_fpr: float = setting(0.01, "false-positive rate the threshold is calibrated to")
    kafka: str = setting("auto", "stream through a local Kafka: auto (if Java is here), yes, no")
    seed: int = setting(1, "seed of the generated traffic and the model")


def step(number: int, text: str) -> None:
    print(f"\n[{number}/5] {text}", flush=True)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captures", type=Path, nargs="*", default=[], metavar="PCAP",
                        help="captures to replay with the generated traffic")
    add_settings_arguments(parser, DemoSettings)


def run(args: argparse.Namespace) -> int:
    from headbits.scorer.offline import format_table, read_labelled_heads
    from headbits.traffic import generate, generate_anomalies
    from headbits.trainer import dataset
    from headbits.trainer.train import TrainSettings, train_and_export

    settings = settings_from_args(DemoSettings, args)
    out = settings.out_dir
    if (out / "models").exists():
        shutil.rmtree(out / "models")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    step(1, f"generating training traffic: {settings.sessions} sessions per protocol")
    training = generate(sessions_per_protocol=settings.sessions, seed=settings.seed)

    step(2, f"training the autoencoder and classifier (N = {settings.n})")
    train_settings = TrainSettings(models_dir=out / "models", n=settings.n,
                                   target_fpr=settings.target_fpr, min_class_rows=10,
                                   seed=settings.seed)
    version = train_and_export(dataset.from_heads(training, "generated"), train_settings,
                               ["generated"])
    print(f"exported {version.location}: classes {', '.join(version.classes)}")

    step(3, "generating the traffic to replay (normal sessions and anomalies)")
    normal = generate(sessions_per_protocol=settings.live_sessions, seed=settings.seed + 1)
    anomalies = generate_anomalies(settings.anomalies, seed=settings.seed + 1)
    captured, errors = read_labelled_heads(args.captures)
    for error in errors:
        print(f"warning: {error}", file=sys.stderr)
    live = normal + anomalies + captured
    live_file = out / "replayed-heads.avro"
    write_heads_file(live_file, live)

    rows = score_live(settings, Path(version.location), live, live_file)
    rows.sort(key=lambda row: row["score"] / max(row["threshold"], 1e-12), reverse=True)

    step(5, "alerts and report")
    alerts = [row for row in rows if row["reason"]]
    print(format_table(alerts, 25))
    summary = write_report(out, rows, {h.uid for h in normal}, {h.uid for h in anomalies}, live,
                           settings.target_fpr)
    print(f"\n{summary}")
    print(f"\nreport: {out / 'report.md'}  ({time.monotonic() - started:.0f} s in all)")
    return 0


def score_live(
    settings: DemoSettings, version_dir: Path, live: list[PayloadHead], live_file: Path,
) -> list[dict]:
    """Score records of every live head: through Kafka and the services if possible."""
    if settings.kafka != "no" and shutil.which("java"):
        step(4, "replaying through Kafka: collector -> featurizer -> scorer (separate processes)")
        return stream_through_kafka(settings, version_dir, live, live_file)
    if settings.kafka == "yes":
        raise SystemExit("headbits demo: --kafka yes needs Java 17 for the local broker")
    step(4, "no Java here: scoring in this process with the scorer's own code (no Kafka)")
    from headbits.scorer.inprocess import SavedModelBackend
    from headbits.scorer.offline import score_heads

    backend = SavedModelBackend(version_dir)
    try:
        return score_heads(live, backend)
    finally:
        backend.close()


def stream_through_kafka(
    settings: DemoSettings, version_dir: Path, live: list[PayloadHead], live_file: Path,
) -> list[dict]:
    from headbits.devtools import kafka_broker
    from headbits.devtools.harness import ServiceProcess, Topics, read_topic, stop_all

    logs = settings.out_dir / "logs"
    logs.mkdir(exist_ok=True)
    broker = kafka_broker.start(run_dir=settings.out_dir / "kafka")
    processes: list[ServiceProcess] = []
    try:
        topics = Topics(broker.bootstrap_servers, prefix=f"demo{int(time.time())}")
        print(f"Kafka {kafka_broker.KAFKA_VERSION} on {broker.bootstrap_servers}; logs in {logs}")
        processes = [
            ServiceProcess("featurizer", topics.env, logs),
            ServiceProcess("scorer", topics.env, logs, "--model-dir", str(version_dir),
                           "--write-scores", "true"),
        ]
        for process in processes:
            process.wait_started()
        collector = ServiceProcess("collector", topics.env, logs, "--source", "heads-file",
                                   "--heads-files", str(live_file))
        processes.append(collector)
        if collector.process.wait(120) != 0:
            raise RuntimeError(f"the collector failed:\n{collector.log_tail()}")
        uids = {head.uid for head in live}
        scores = read_topic(topics.settings, topics["scores"], "score",
                            lambda got: {s["uid"] for s in got} >= uids, timeout=120)
        alerts = read_topic(topics.settings, topics["alerts"], "alert",
                            lambda got: len({a["uid"] for a in got}) >= sum(s["alert"]
                                                                           for s in scores),
                            timeout=30)
    finally:
        stop_all(processes)
        broker.stop()
    print(f"{len(scores)} connections scored by the scorer service, {len(alerts)} alerts")
    return join_scores(live, scores, alerts)


def join_scores(live: list[PayloadHead], scores: list[dict], alerts: list[dict]) -> list[dict]:
    """One row per live head, as `headbits score` reports it, from the services' outputs."""
    from headbits.common.protocols import expected_protocol

    score_by_uid = {s["uid"]: s for s in scores}
    alert_by_uid = {a["uid"]: a for a in alerts}
    rows = []
    for head in live:
        score = score_by_uid[head.uid]
        alert = alert_by_uid.get(head.uid, {})
        rows.append({
            "uid": head.uid, "ts": head.ts, "sensor": head.sensor, "orig_h": head.orig_h,
            "orig_p": head.orig_p, "resp_h": head.resp_h, "resp_p": head.resp_p,
            "transport": head.transport,
            "expected_source": expected_protocol(head.services, head.transport,
                                                 head.resp_p).source,
            **{k: v for k, v in score.items() if not k.startswith("_")},
            "reason": alert.get("reason", ""), "direction": alert.get("direction", ""),
        })
    return rows


def write_report(
    out: Path, rows: list[dict], normal: set[str], anomalous: set[str], live: list[PayloadHead],
    target_fpr: float,
) -> str:
    """report.md + error histogram; returns the headline lines (the measured false-positive
    rate next to the rates the model and the scorer were configured to)."""
    from headbits.common.protocols import expected_protocol
    from headbits.scorer.alert_rules import DEFAULT_RULE
    from headbits.trainer.report import pyplot

    truth = {h.uid: expected_protocol(h.services, h.transport, h.resp_p).protocol for h in live}
    normal_rows = [r for r in rows if r["uid"] in normal]
    anomaly_rows = [r for r in rows if r["uid"] in anomalous]
    false_alerts = sum(1 for r in normal_rows if r["reason"])
    caught = sum(1 for r in anomaly_rows if r["reason"])
    lines = [
        f"normal sessions: {len(normal_rows)}, alerts on them (false positives): {false_alerts}"
        f" = {false_alerts / max(len(normal_rows), 1):.2%} measured; configured: "
        f"anomalous-bytes threshold at {target_fpr:.2%}, novel-protocol at "
        f"{DEFAULT_RULE.alert_rate:.2%}, protocol-mismatch uncalibrated",
        f"anomalous sessions: {len(anomaly_rows)}, alerted: {caught}",
    ]
    table = ["| protocol | sessions | alerts | mean error | threshold |", "|---|---|---|---|---|"]
    for protocol in sorted({truth[r["uid"]] for r in normal_rows}):
        group = [r for r in normal_rows if truth[r["uid"]] == protocol]
        table.append(f"| {protocol} | {len(group)} | {sum(1 for r in group if r['reason'])} | "
                     f"{np.mean([r['score'] for r in group]):.4f} | "
                     f"{np.median([r['threshold'] for r in group]):.4f} |")
    anomalies = ["| uid | connection | predicted | expected | reason |", "|---|---|---|---|---|"]
    for r in anomaly_rows:
        anomalies.append(f"| {r['uid']} | {r['resp_h']}:{r['resp_p']}/{r['transport']} | "
                         f"{r['predicted_protocol']} | {r['expected_protocol']} | "
                         f"{r['reason'] or '(missed)'} |")

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    bins = np.geomspace(max(min(r["score"] for r in rows), 1e-5),
                        max(r["score"] for r in rows) * 1.01, 40)
    axis.hist([r["score"] for r in normal_rows], bins=bins, alpha=0.6, label="normal")
    axis.hist([r["score"] for r in anomaly_rows], bins=bins, alpha=0.6, label="anomalies")
    axis.axvline(float(np.median([r["threshold"] for r in rows])), color="k", linestyle="--",
                 label="median threshold")
    axis.set_xscale("log")
    axis.set_xlabel("reconstruction error")
    axis.set_ylabel("sessions")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "errors.png", dpi=90)
    plt.close(figure)

    (out / "report.md").write_text("\n".join([
        "# headbits demo", "", *[f"- {line}" for line in lines], "",
        "## Normal traffic per protocol", "", *table, "",
        "## Anomalies", "", *anomalies, "", "![errors](errors.png)", "",
    ]))
    return "\n".join(lines)

