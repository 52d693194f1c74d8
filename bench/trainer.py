"""Memory and read speed of the trainer's window sample for windows of 10^5, 10^6 and 10^7 rows.

Starts the development Kafka broker (or uses --bootstrap-servers), writes synthetic feature
records (skewed over 12 protocols and 6 sensors, parser-confirmed, 1 % redelivered duplicates)
to a fresh features topic per size, then runs the trainer's own window reader
(`headbits.trainer.service.read_window`, with its stratified reservoir and memory budget) in a
fresh process and reports its peak RSS (VmHWM), its RSS before the first record (the
interpreter, TensorFlow and the Kafka client), and records read per second. The budget is the
trainer's setting (`--sample-memory-mb`, default 2048) with `max_rows` lifted so that the budget,
not the row cap, bounds the sample. The last line is a JSON object.

    .venv/bin/python bench/trainer.py [--sizes 100000,1000000,10000000] [--sample-memory-mb 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid

import numpy as np

from headbits.common.avro import ValueCodec
from headbits.common.kafka import KafkaSettings, Producer, ensure_topics
from headbits.devtools import kafka_broker

PROTOCOLS = ("tls", "http", "dns", "ssh", "smtp", "quic", "smb", "ftp", "rdp", "mysql",
             "modbus", "bacnet")
SENSORS = tuple(f"zeek-{i}" for i in range(6))
CHUNK = 20_000

READER = """
import json, logging, sys, time
from headbits.trainer.service import TrainerSettings, read_window
settings = TrainerSettings(**json.loads(sys.argv[1]))
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith(key)) / 1024
baseline = status("VmRSS")  # the interpreter, TensorFlow and the clients, before any record
started = time.monotonic()
window = read_window(settings, logging.getLogger("bench"), time.time() + 60)
seconds = time.monotonic() - started
print(json.dumps({"read": window.counts.read, "kept": len(window.records),
                  "duplicates": window.counts.duplicates, "seconds": seconds,
                  "peak_rss_mb": status("VmHWM"), "baseline_rss_mb": baseline}))
"""


def write_window(settings: KafkaSettings, topic: str, rows: int, seed: int) -> float:
    """Produce `rows` feature records (plus 1 % repeats); returns the seconds it took."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(PROTOCOLS) + 1) ** 1.5  # a few protocols dominate
    codec = ValueCodec("features", topic)
    producer = Producer(settings)
    started = time.monotonic()
    written = 0
    while written < rows:
        count = min(CHUNK, rows - written)
        protocols = rng.choice(len(PROTOCOLS), count, p=weights / weights.sum())
        sensors = rng.integers(0, len(SENSORS), count)
        payload = rng.integers(0, 256, (count, 128), dtype=np.uint8)
        records = [{
            "uid": f"C{written + i:015d}", "ts": time.time(), "sensor": SENSORS[sensors[i]],
            "orig_h": "10.0.0.1", "orig_p": 1024 + i % 60000, "resp_h": "10.0.0.2",
            "resp_p": 443, "transport": "tcp", "n": 64, "head_bytes": payload[i].tobytes(),
            "orig_length": 64, "resp_length": 64, "orig_gap": False, "resp_gap": False,
            "expected_protocol": PROTOCOLS[protocols[i]], "expected_source": "zeek",
        } for i in range(count)]
        records += records[: count // 100]  # at-least-once redelivery repeats a few records
        values = codec.encode_many(records)
        producer.produce_many(topic, values, [r["uid"] for r in records], codec.headers)
        written += count
    producer.flush()
    return time.monotonic() - started


def measure(bootstrap: str, rows: int, memory_mb: int) -> dict:
    topic = f"bench{uuid.uuid4().hex[:8]}.features"
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_partitions=4, features_topic=topic)
    ensure_topics(settings, [topic])
    write_seconds = write_window(settings, topic, rows, seed=rows)
    trainer = {"bootstrap_servers": bootstrap, "features_topic": topic, "window_hours": 1.0,
               "max_rows": 10**9, "sample_memory_mb": memory_mb, "n": 16}
    result = subprocess.run([sys.executable, "-c", READER, json.dumps(trainer)],
                            capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["rows_per_s"] = figures["read"] / figures["seconds"]
    figures["write_seconds"] = write_seconds
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--sample-memory-mb", type=int, default=2048)
    parser.add_argument("--bootstrap-servers", default="")
    args = parser.parse_args()
    broker = None if args.bootstrap_servers else kafka_broker.start()
    bootstrap = args.bootstrap_servers or broker.bootstrap_servers
    results = {}
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            figures = measure(bootstrap, size, args.sample_memory_mb)
            results[str(size)] = figures
            print(f"{size:>10,} rows: read {figures['read']:,} in {figures['seconds']:.1f} s "
                  f"({figures['rows_per_s']:,.0f}/s), kept {figures['kept']:,}, "
                  f"{figures['duplicates']:,} duplicates dropped, peak RSS "
                  f"{figures['peak_rss_mb']:.0f} MB ({figures['baseline_rss_mb']:.0f} MB before "
                  "the first record)", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    print(json.dumps({
        "sample_memory_mb": args.sample_memory_mb,
        "peak_rss_mb": {size: round(f["peak_rss_mb"], 1) for size, f in results.items()},
        "baseline_rss_mb": {size: round(f["baseline_rss_mb"], 1) for size, f in results.items()},
        "rows_per_s": {size: round(f["rows_per_s"]) for size, f in results.items()},
        "kept_rows": {size: f["kept"] for size, f in results.items()},
    }))


if __name__ == "__main__":
    main()
