"""Throughput, latency and memory of the streaming services on a real Kafka broker.

Starts the development broker (or uses --bootstrap-servers), trains a tiny model, then measures:
the collector's Kafka side (encode + produce heads), the featurizer alone and the scorer alone on
preloaded topics for several batch sizes, the whole featurizer -> scorer pipeline at full speed,
and the latency from a head's produce timestamp to its score's produce timestamp (the scorer
writes a connection's alert and score in the same batch) at a paced rate. Each service runs as
its own `headbits <service>` process; peak RSS is its VmHWM. The last line is a JSON object.

    .venv/bin/python bench/pipeline.py [--connections 200000] [--batch-sizes 500,2000,5000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from headbits.common.avro import ValueCodec
from headbits.common.kafka import KafkaSettings, Producer, ensure_topics, window_offsets
from headbits.common.kafka.settings import TOPIC_KINDS
from headbits.common.records import PayloadHead
from headbits.devtools import kafka_broker
from headbits.featurizer.bits import pack_heads
from headbits.featurizer.transform import featurize


def synthetic_heads(count: int, seed: int = 1) -> list[PayloadHead]:
    """HTTP-, TLS- and random-looking heads with realistic lengths."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 65, size=(count, 2))
    blob = rng.bytes(count * 128)
    prefixes = (b"GET / HTTP/1.1\r\nHost: ", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"")
    heads = []
    for i in range(count):
        prefix = prefixes[i % 3]
        orig = (prefix + blob[i * 128 : i * 128 + 64])[: lengths[i, 0]]
        resp = blob[i * 128 + 64 : i * 128 + 64 + lengths[i, 1]]
        heads.append(PayloadHead(
            f"B{uuid.uuid4().hex[:17]}", time.time(), "bench", "10.0.0.1", 1024 + i % 60000,
            "10.0.0.2", (80, 443, 8081)[i % 3], "tcp", (), orig, resp, len(orig), len(resp),
            False, False,
        ))
    return heads


def topics(bootstrap: str) -> tuple[KafkaSettings, dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    names = {kind: f"bench{tag}.{kind}" for kind in TOPIC_KINDS}
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_partitions=4,
                             **{f"{kind}_topic": name for kind, name in names.items()})
    ensure_topics(settings, names.values())
    env = {"HEADBITS_BOOTSTRAP_SERVERS": bootstrap, "HEADBITS_METRICS_PORT": "-1",
           "HEADBITS_LOG_LEVEL": "warning",
           **{f"HEADBITS_{kind.upper()}_TOPIC": name for kind, name in names.items()}}
    return settings, env | {"_tag": tag}


def produce_heads(settings: KafkaSettings, heads: list[PayloadHead], rate: float | None = None):
    """Encode and produce like the collector; paced to `rate` per second when given."""
    codec = ValueCodec("payload_head", settings.heads_topic)
    producer = Producer(settings)
    started = time.monotonic()
    chunk = 1000 if rate is None else max(1, int(rate / 100))
    for start in range(0, len(heads), chunk):
        part = heads[start : start + chunk]
        if rate is not None:
            delay = started + start / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.produce_many(settings.heads_topic, codec.encode_many([h.to_dict() for h in part]),
                              [h.uid for h in part], codec.headers)
    producer.flush()
    return time.monotonic() - started


def total(settings: KafkaSettings, topic: str) -> int:
    return sum(end for _, end in window_offsets(settings, topic, since_ms=0).values())


def start_service(verb: str, env: dict, *args: str) -> subprocess.Popen:
    clean = {k: v for k, v in env.items() if not k.startswith("_")}
    clean["HEADBITS_GROUP_ID"] = f"{verb}-{env['_tag']}"
    return subprocess.Popen([sys.executable, "-m", "headbits.cli", verb, *args],
                            env={**os.environ, **clean},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_count(settings: KafkaSettings, topic: str, count: int, timeout: float = 600.0) -> float:
    """Seconds from now until `topic` holds `count` records (polled every 0.2 s)."""
    started = time.monotonic()
    while total(settings, topic) < count:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{topic}: {total(settings, topic)}/{count} after {timeout} s")
        time.sleep(0.2)
    return time.monotonic() - started


def peak_rss_mb(process: subprocess.Popen) -> float:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(process: subprocess.Popen) -> float:
    """User + system CPU time of the process so far (all its threads, librdkafka's included)."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen) -> float:
    rss = peak_rss_mb(process)
    process.terminate()
    process.wait(60)
    return rss


def timed_service(verb: str, env: dict, settings: KafkaSettings, output: str, count: int,
                  *args: str) -> tuple[float, float, float]:
    """(records/s, CPU microseconds per record, peak RSS MB) of one service draining a preloaded
    input of `count` records.

    Timing starts at the first output record, so process start (TensorFlow import, group join)
    is excluded. CPU time per record does not depend on what else the machine is running, so it
    is the figure to compare between runs on a shared machine."""
    process = start_service(verb, env, *args)
    wait_count(settings, output, 1, timeout=120)
    first, cpu_first = time.monotonic(), cpu_seconds(process)
    wait_count(settings, output, count)
    elapsed, cpu = time.monotonic() - first, cpu_seconds(process) - cpu_first
    return count / elapsed, cpu / count * 1e6, stop(process)


def tiny_model(base: Path) -> Path:
    from headbits.trainer.export import export_model
    from headbits.trainer.model import TrainingConfig, train

    heads = synthetic_heads(3000, seed=7)
    batch = pack_heads([h.orig_head for h in heads], [h.resp_head for h in heads], 64)
    labels = np.array([i % 3 for i in range(len(heads))])
    config = TrainingConfig(n=16, max_epochs=2, min_threshold_rows=100, target_fpr=0.01)
    trained = train(batch, labels, ("http", "tls", "unknown"), batch, labels, config,
                    progress=False)
    return export_model(trained, base, version=1)


def preload_features(settings: KafkaSettings, heads: list[PayloadHead]) -> None:
    codec = ValueCodec("features", settings.features_topic)
    producer = Producer(settings)
    for start in range(0, len(heads), 5000):
        features, _ = featurize([h.to_dict() for h in heads[start : start + 5000]])
        producer.produce_many(settings.features_topic, codec.encode_many(features),
                              [f["uid"] for f in features], codec.headers)
    producer.flush()


def warm_pipeline(bootstrap: str, model: Path, warm_seed: int
                  ) -> tuple[KafkaSettings, subprocess.Popen, subprocess.Popen, int]:
    """(settings, featurizer, scorer, warm-up count): both services on fresh topics, already
    through 100 warm-up heads (model loaded, groups joined), so timing excludes start-up."""
    settings, env = topics(bootstrap)
    featurizer = start_service("featurizer", env)
    scorer = start_service("scorer", env, "--model-dir", str(model), "--write-scores", "true")
    warm = synthetic_heads(100, seed=warm_seed)
    produce_heads(settings, warm)
    wait_count(settings, settings.scores_topic, len(warm), timeout=120)
    return settings, featurizer, scorer, len(warm)


def latency_run(bootstrap: str, model: Path, rate: float, seconds: float) -> dict:
    """p50/p99 head-produced -> score-produced at a paced rate, both services running."""
    from headbits.common.kafka import Consumer

    settings, featurizer, scorer, warmed = warm_pipeline(bootstrap, model, warm_seed=11)
    heads = synthetic_heads(int(rate * seconds), seed=12)
    produce_heads(settings, heads, rate)
    wait_count(settings, settings.scores_topic, warmed + len(heads))
    stamps: dict[str, dict[str, int]] = {"heads": {}, "scores": {}}
    for kind, by_uid in stamps.items():
        topic = getattr(settings, f"{kind}_topic")
        consumer = Consumer(settings, f"lat-{uuid.uuid4().hex}", [topic])
        while len(by_uid) < warmed + len(heads):
            for message in consumer.consume(10000, 1.0):
                by_uid[message.key().decode()] = message.timestamp()[1]
        consumer.close()
    delays = np.array([stamps["scores"][h.uid] - stamps["heads"][h.uid] for h in heads], float)
    rss = {"featurizer": stop(featurizer), "scorer": stop(scorer)}
    return {"p50_ms": float(np.percentile(delays, 50)), "p99_ms": float(np.percentile(delays, 99)),
            "rss": rss}


def report_service(figures: dict, verb: str, batch: int, rate: float, cpu_us: float,
                   rss: float) -> None:
    figures[f"{verb}_msgs_per_s_batch_{batch}"] = round(rate)
    figures[f"{verb}_cpu_us_per_msg_batch_{batch}"] = round(cpu_us, 1)
    figures[f"{verb}_peak_rss_mb"] = round(rss, 1)
    print(f"{verb} alone, batch {batch}: {rate:,.0f} msgs/s, {cpu_us:.1f} us CPU per msg, "
          f"peak RSS {rss:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", help="use this cluster instead of a dev broker")
    parser.add_argument("--connections", type=int, default=200_000)
    parser.add_argument("--batch-sizes", default="500,2000,5000")
    parser.add_argument("--latency-rate", type=float, default=10_000)
    parser.add_argument("--latency-seconds", type=float, default=10)
    args = parser.parse_args()
    broker = None if args.bootstrap_servers else kafka_broker.start()
    bootstrap = args.bootstrap_servers or broker.bootstrap_servers
    figures: dict[str, object] = {"connections": args.connections, "cores": os.cpu_count()}
    try:
        workdir = Path(tempfile.mkdtemp(prefix="headbits-bench-"))
        model = tiny_model(workdir)
        heads = synthetic_heads(args.connections)

        settings, _ = topics(bootstrap)
        seconds = produce_heads(settings, heads)
        figures["collector_produce_msgs_per_s"] = round(len(heads) / seconds)
        print(f"collector side (encode + produce heads): {len(heads) / seconds:,.0f} msgs/s")

        for batch in map(int, args.batch_sizes.split(",")):
            settings_b, env_b = topics(bootstrap)
            produce_heads(settings_b, heads)
            rate, cpu_us, rss = timed_service(
                "featurizer", env_b, settings_b, settings_b.features_topic, len(heads),
                "--batch-size", str(batch))
            report_service(figures, "featurizer", batch, rate, cpu_us, rss)

            preload_features(settings_b, heads)
            rate, cpu_us, rss = timed_service(
                "scorer", env_b, settings_b, settings_b.scores_topic, len(heads),
                "--batch-size", str(batch), "--model-dir", str(model), "--write-scores", "true")
            report_service(figures, "scorer", batch, rate, cpu_us, rss)

        settings, featurizer, scorer, warmed = warm_pipeline(bootstrap, model, warm_seed=5)
        started = time.monotonic()
        produce_heads(settings, heads)
        wait_count(settings, settings.scores_topic, warmed + len(heads))
        rate = len(heads) / (time.monotonic() - started)
        stop(featurizer)
        stop(scorer)
        figures["pipeline_connections_per_s"] = round(rate)
        print(f"whole pipeline (produce heads -> scores acknowledged): {rate:,.0f} connections/s")

        latency = latency_run(bootstrap, model, args.latency_rate, args.latency_seconds)
        figures["latency_rate"] = args.latency_rate
        figures["latency_p50_ms"] = latency["p50_ms"]
        figures["latency_p99_ms"] = latency["p99_ms"]
        print(f"head produced -> score produced at {args.latency_rate:,.0f}/s: "
              f"p50 {latency['p50_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms")
    finally:
        if broker is not None:
            broker.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
