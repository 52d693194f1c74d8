"""Throughput, CPU, latency and memory of the streaming services on a real Kafka broker.

Starts the development broker (or uses --bootstrap-servers), trains a tiny model, then measures,
each service as its own `headbits <service>` process (peak RSS is its VmHWM, CPU its utime +
stime, librdkafka's and TensorFlow's threads included):
  - the collector's Kafka side (batch encode + produce heads), .v2 and .v1;
  - the featurizer alone and the scorer alone draining a backlog written while the service is
    stopped (an overload far past 10x: the input is all there at once; their RSS shows the
    bounded queues);
  - the whole featurizer -> scorer pipeline at full speed in the .v2 format and, in the same run,
    the .v1 format (`--topic-format v1`: one Avro record per message), with CPU microseconds per
    connection over every headbits process (the collector-side produce in this process, the
    featurizer, the scorer and its in-process model; not the broker): the figure that does not
    depend on what else the machine runs;
  - scaling: 1, 2 and 4 featurizer and scorer processes on 4 partitions (.v2);
  - latency from a head's produce timestamp to its score's (the scorer writes a connection's
    alert and score in the same batch) at a paced rate.
Heads come from 16 sensors, each batch of --chunk heads one sensor's (one collector each). The
last line is a JSON object.

    .venv/bin/python bench/pipeline.py [--connections 200000] [--scaling 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from headbits.common.avro import ValueCodec
from headbits.common.columnar import batch_schema, encode_batches, is_batch, objects_table
from headbits.common.kafka import Consumer, KafkaSettings, Producer, ensure_topics
from headbits.common.kafka.settings import TOPIC_KINDS
from headbits.common.records import PayloadHead
from headbits.devtools import kafka_broker
from headbits.featurizer.bits import pack_heads
from headbits.featurizer.transform import featurize_table

SENSORS = 16
CHUNK = 2000


def synthetic_heads(count: int, seed: int = 1, per_sensor: int = CHUNK) -> list[PayloadHead]:
    """HTTP-, TLS- and random-looking heads with realistic lengths; head i comes from sensor
    (i // per_sensor) % SENSORS."""
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
            f"B{uuid.uuid4().hex[:17]}", time.time(), f"bench-{i // per_sensor % SENSORS}",
            "10.0.0.1", 1024 + i % 60000, "10.0.0.2", (80, 443, 8081)[i % 3], "tcp", (),
            orig, resp, len(orig), len(resp),
            False, False,
        ))
    return heads


def topics(bootstrap: str, partitions: int = 4) -> tuple[KafkaSettings, dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    names = {kind: f"bench{tag}.{kind}" for kind in TOPIC_KINDS}
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_partitions=partitions,
                             **{f"{kind}_topic": name for kind, name in names.items()})
    ensure_topics(settings, names.values())
    env = {"HEADBITS_BOOTSTRAP_SERVERS": bootstrap, "HEADBITS_METRICS_PORT": "-1",
           "HEADBITS_LOG_LEVEL": "warning", "HEADBITS_WRITE_DRIFT": "false",
           "HEADBITS_INPROCESS_THREADS": "1",
           **{f"HEADBITS_{kind.upper()}_TOPIC": name for kind, name in names.items()}}
    return settings, env | {"_tag": tag}


def own_cpu_seconds() -> float:
    """CPU of this process so far, all its threads (the producer's librdkafka threads too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def produce_heads(settings: KafkaSettings, heads: list[PayloadHead], fmt: str = "v2",
                  rate: float | None = None, producer: Producer | None = None
                  ) -> tuple[float, float]:
    """Encode and produce as the collector does, a chunk at a time (`fmt` v2: one Arrow batch
    per chunk, keyed by its sensor; v1: one Avro record per head, keyed by uid), paced to
    `rate` per second when given, through `producer` (default: a new one). Returns (seconds,
    CPU seconds of this process)."""
    codec = ValueCodec("payload_head", settings.heads_topic)
    headers = batch_schema("payload_head").headers
    producer = producer or Producer(settings)
    started, cpu = time.monotonic(), own_cpu_seconds()
    chunk = CHUNK if rate is None else max(1, int(rate / 100))
    for start in range(0, len(heads), chunk):
        part = heads[start : start + chunk]
        if rate is not None:
            delay = started + start / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if fmt == "v1":
            producer.produce_many(settings.heads_topic,
                                  codec.encode_many([h.to_dict() for h in part]),
                                  [h.uid for h in part], codec.headers)
            continue
        table = objects_table("payload_head", part)
        for sensor, value, _ in encode_batches(table, table.column("sensor"), CHUNK):
            producer.produce(settings.heads_topic, value, sensor, headers)
    producer.flush()
    return time.monotonic() - started, own_cpu_seconds() - cpu


def read_rows(settings: KafkaSettings, topic: str, count: int, timeout: float = 600.0,
              uids: bool = False) -> tuple[int, dict[str, int]]:
    """(latest produce timestamp in ms, uid -> its message's timestamp when `uids`) once `topic`
    holds `count` rows (a .v2 message counts its rows)."""
    consumer = Consumer(settings, f"count-{uuid.uuid4().hex}", [topic],
                        **{"enable.auto.commit": False})
    rows, latest, stamps = 0, 0, {}
    deadline = time.monotonic() + timeout
    try:
        while rows < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: {rows}/{count} rows after {timeout} s")
            for message in consumer.consume(10000, 0.5):
                stamp = message.timestamp()[1]
                latest = max(latest, stamp)
                value = message.value()
                if is_batch(value, message.headers()):
                    table = pa.ipc.open_stream(value).read_all()
                    rows += table.num_rows
                    if uids:
                        stamps.update(dict.fromkeys(table.column("uid").to_pylist(), stamp))
                else:
                    rows += 1
                    if uids:
                        stamps[message.key().decode()] = stamp
    finally:
        consumer.close()
    return latest, stamps


LOGS = Path(tempfile.mkdtemp(prefix="headbits-bench-logs-"))


def rows_in(settings: KafkaSettings, topic: str) -> int:
    """Rows the topic holds now (a .v2 message counts its rows), read to its end offsets."""
    from headbits.common.kafka import read_offset_ranges, window_offsets

    rows = 0
    for messages in read_offset_ranges(settings, topic, window_offsets(settings, topic, 0)):
        for message in messages:
            value = message.value()
            rows += (pa.ipc.open_stream(value).read_all().num_rows
                     if is_batch(value, message.headers()) else 1)
    return rows


def check_delivered(settings: KafkaSettings, count: int, figures: dict) -> int:
    """Rows of the heads topic; a shortfall (messages Kafka acknowledged that are not there)
    is counted in `heads_missing_after_produce` rather than waited for."""
    present = rows_in(settings, settings.heads_topic)
    if present != count:
        figures["heads_missing_after_produce"] = (
            figures.get("heads_missing_after_produce", 0) + count - present)
        print(f"WARNING: {count - present} of {count} acknowledged heads are not in "
              f"{settings.heads_topic}")
    return present


def start_service(verb: str, env: dict, *args: str) -> subprocess.Popen:
    """The service as its own process; its warnings and errors go to a file in LOGS."""
    clean = {k: v for k, v in env.items() if not k.startswith("_")}
    clean["HEADBITS_GROUP_ID"] = f"{verb}-{env['_tag']}"
    log = (LOGS / f"{verb}-{env['_tag']}-{uuid.uuid4().hex[:4]}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "headbits.cli", verb, *args],
                            env={**os.environ, **clean}, stdout=log, stderr=subprocess.STDOUT)


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
    headers = batch_schema("features").headers
    producer = Producer(settings)
    for start in range(0, len(heads), CHUNK):
        features, _ = featurize_table(objects_table("payload_head", heads[start : start + CHUNK]))
        for sensor, value, _ in encode_batches(features, features.column("sensor"), CHUNK):
            producer.produce(settings.features_topic, value, sensor, headers)
    producer.flush()


class Pipeline:
    """`copies` featurizer and scorer processes on fresh topics, already through 100 warm-up
    heads (model loaded, groups joined), so that timing excludes start-up."""

    def __init__(self, bootstrap: str, model: Path, fmt: str = "v2", copies: int = 1,
                 seed: int = 5) -> None:
        self.settings, env = topics(bootstrap)
        env["HEADBITS_TOPIC_FORMAT"] = fmt
        self.fmt = fmt
        self.featurizers = [start_service("featurizer", env) for _ in range(copies)]
        self.scorers = [start_service("scorer", env, "--model-dir", str(model),
                                      "--write-scores", "true") for _ in range(copies)]
        warm = synthetic_heads(20 * SENSORS, seed=seed, per_sensor=20)  # every partition
        # One producer for the warm-up and the measured heads, as a collector's lives on: a new
        # one spends its first few hundred ms on metadata and its idempotence id, and the heads
        # it holds meanwhile would count as pipeline latency.
        self.producer = Producer(self.settings)
        produce_heads(self.settings, warm, fmt, producer=self.producer)
        self.warmed = check_delivered(self.settings, len(warm), {})
        read_rows(self.settings, self.settings.scores_topic, self.warmed, timeout=300)

    @property
    def processes(self) -> list[subprocess.Popen]:
        return self.featurizers + self.scorers

    def cpu(self) -> float:
        return sum(cpu_seconds(process) for process in self.processes)

    def run(self, heads: list[PayloadHead], figures: dict) -> dict:
        """Connections/s (first head produced -> last score produced) and CPU us/connection."""
        cpu_before = self.cpu()
        started_ms = time.time() * 1000
        _, produce_cpu = produce_heads(self.settings, heads, self.fmt, producer=self.producer)
        present = check_delivered(self.settings, self.warmed + len(heads), figures)
        latest_ms, _ = read_rows(self.settings, self.settings.scores_topic, present)
        services_cpu = self.cpu() - cpu_before
        rate = len(heads) / max(1e-3, (latest_ms - started_ms) / 1000)
        return {"connections_per_s": round(rate),
                "cpu_us_per_connection": round((produce_cpu + services_cpu) / len(heads) * 1e6, 2),
                "produce_cpu_us_per_connection": round(produce_cpu / len(heads) * 1e6, 2)}

    def stop(self) -> dict[str, float]:
        rss = {"featurizer": max(stop(p) for p in self.featurizers),
               "scorer": max(stop(p) for p in self.scorers)}
        return rss


def timed_service(verb: str, env: dict, settings: KafkaSettings, input_topic: str, output: str,
                  load: Callable[[list[PayloadHead]], None], heads: list[PayloadHead],
                  *args: str) -> tuple[float, float, float, int]:
    """(rows/s, CPU microseconds per row, peak RSS MB, rows drained) of one service draining a
    backlog of `heads` that `load` writes to its input.

    The service starts and warms up on a few rows (model loaded, group joined), is stopped
    (SIGSTOP) while the backlog is written, and continued: time runs from the continue to the
    last output's timestamp and CPU from the continue on, so neither start-up nor the wait for
    the backlog counts. The rows drained are those the input holds, not those produced (a
    shortfall is reported by the caller, never waited for)."""
    process = start_service(verb, env, *args)
    load(synthetic_heads(20 * SENSORS, seed=7, per_sensor=20))
    warm = rows_in(settings, input_topic)
    read_rows(settings, output, warm, timeout=300)
    os.kill(process.pid, signal.SIGSTOP)
    try:
        load(heads)
        total = rows_in(settings, input_topic)
        cpu_before = cpu_seconds(process)
        continued_ms = time.time() * 1000
    finally:
        os.kill(process.pid, signal.SIGCONT)
    latest_ms, _ = read_rows(settings, output, total)
    cpu = cpu_seconds(process) - cpu_before
    count = total - warm
    elapsed = max(1e-3, (latest_ms - continued_ms) / 1000)
    return count / elapsed, cpu / count * 1e6, stop(process), count


def latency_run(bootstrap: str, model: Path, rate: float, seconds: float, figures: dict
                ) -> dict:
    """p50/p99 head-produced -> score-produced at a paced rate, both services running (.v2)."""
    pipeline = Pipeline(bootstrap, model, seed=11)
    settings = pipeline.settings
    heads = synthetic_heads(int(rate * seconds), seed=12)
    produce_heads(settings, heads, rate=rate, producer=pipeline.producer)
    present = check_delivered(settings, pipeline.warmed + len(heads), figures)
    _, scored = read_rows(settings, settings.scores_topic, present, uids=True)
    _, produced = read_rows(settings, settings.heads_topic, present, uids=True)
    delays = np.array([scored[h.uid] - produced[h.uid] for h in heads if h.uid in produced],
                      float)
    return {"p50_ms": float(np.percentile(delays, 50)), "p99_ms": float(np.percentile(delays, 99)),
            "rss": pipeline.stop()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", help="use this cluster instead of a dev broker")
    parser.add_argument("--connections", type=int, default=200_000)
    parser.add_argument("--scaling", default="1,2,4", help="featurizer/scorer process counts")
    parser.add_argument("--latency-rate", type=float, default=10_000)
    parser.add_argument("--latency-seconds", type=float, default=10)
    args = parser.parse_args()
    broker = None if args.bootstrap_servers else kafka_broker.start()
    bootstrap = args.bootstrap_servers or broker.bootstrap_servers
    print(f"service logs: {LOGS}")
    figures: dict[str, object] = {"connections": args.connections, "cores": os.cpu_count(),
                                  "load_average_1min_start": os.getloadavg()[0]}
    try:
        workdir = Path(tempfile.mkdtemp(prefix="headbits-bench-"))
        model = tiny_model(workdir)
        heads = synthetic_heads(args.connections)

        for fmt in ("v2", "v1"):
            settings, _ = topics(bootstrap)
            seconds, cpu = produce_heads(settings, heads, fmt)
            figures[f"{fmt}_collector_produce_msgs_per_s"] = round(len(heads) / seconds)
            figures[f"{fmt}_collector_produce_cpu_us"] = round(cpu / len(heads) * 1e6, 2)
            print(f"collector side {fmt} (encode + produce heads): "
                  f"{len(heads) / seconds:,.0f} heads/s, {cpu / len(heads) * 1e6:.2f} us CPU each")

        scorer_args = ("--model-dir", str(model), "--write-scores", "true")
        for verb, extra in (("featurizer", ()), ("scorer", scorer_args)):
            settings, env = topics(bootstrap)
            if verb == "featurizer":
                load, input_topic, output = (lambda part, settings=settings: produce_heads(
                    settings, part)), settings.heads_topic, settings.features_topic
            else:
                load, input_topic, output = (lambda part, settings=settings: preload_features(
                    settings, part)), settings.features_topic, settings.scores_topic
            rate, cpu_us, rss, drained = timed_service(verb, env, settings, input_topic, output,
                                                       load, heads, *extra)
            if drained != len(heads):
                figures[f"{verb}_input_missing_after_produce"] = len(heads) - drained
                print(f"WARNING: {len(heads) - drained} of {len(heads)} acknowledged rows are "
                      f"not in {input_topic}")
            figures[f"{verb}_rows_per_s"] = round(rate)
            figures[f"{verb}_cpu_us_per_row"] = round(cpu_us, 2)
            figures[f"{verb}_overload_peak_rss_mb"] = round(rss, 1)
            print(f"{verb} alone draining {len(heads):,} rows: {rate:,.0f} rows/s, "
                  f"{cpu_us:.2f} us CPU per row, peak RSS {rss:.0f} MB")

        for fmt in ("v2", "v1"):
            pipeline = Pipeline(bootstrap, model, fmt)
            result = pipeline.run(heads, figures)
            rss = pipeline.stop()
            prefix = "" if fmt == "v2" else "v1_"
            figures[f"{prefix}pipeline_connections_per_s"] = result["connections_per_s"]
            figures[f"{prefix}cpu_us_per_connection"] = result["cpu_us_per_connection"]
            figures[f"{prefix}pipeline_peak_rss_mb"] = rss
            print(f"whole pipeline {fmt} (produce heads -> scores acknowledged): "
                  f"{result['connections_per_s']:,} connections/s, "
                  f"{result['cpu_us_per_connection']} us CPU per connection, RSS {rss}")
        figures["v2_vs_v1"] = round(figures["pipeline_connections_per_s"]
                                    / max(1, figures["v1_pipeline_connections_per_s"]), 2)

        scaling = {}
        for copies in map(int, args.scaling.split(",")):
            if copies == 1:
                scaling["1"] = {"connections_per_s": figures["pipeline_connections_per_s"],
                                "cpu_us_per_connection": figures["cpu_us_per_connection"]}
                continue
            pipeline = Pipeline(bootstrap, model, "v2", copies)
            scaling[str(copies)] = pipeline.run(heads, figures)
            pipeline.stop()
            print(f"{copies} featurizers + {copies} scorers on 4 partitions: "
                  f"{scaling[str(copies)]['connections_per_s']:,} connections/s")
        figures["scaling"] = scaling

        latency = latency_run(bootstrap, model, args.latency_rate, args.latency_seconds, figures)
        figures["latency_rate"] = args.latency_rate
        figures["latency_p50_ms"] = latency["p50_ms"]
        figures["latency_p99_ms"] = latency["p99_ms"]
        print(f"head produced -> score produced at {args.latency_rate:,.0f}/s: "
              f"p50 {latency['p50_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms")
    finally:
        if broker is not None:
            broker.stop()
    figures["load_average_1min_end"] = os.getloadavg()[0]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
