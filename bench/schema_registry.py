"""What the test suite's schema registry costs: first build, each start, memory, disk.

Builds Apicurio Registry from Maven Central into a fresh temporary cache (what a fresh CI machine
pays once; `--cached` uses the normal cache instead), then starts and stops it `--starts` times,
each start timed until the Confluent-compatible API answers, and registers one Avro schema per
start through `confluent_kafka.schema_registry`. The last line is one JSON object of all figures.

    .venv/bin/python bench/schema_registry.py [--starts 3] [--cached]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from headbits.devtools import schema_registry

SCHEMA = json.dumps({"type": "record", "name": "Bench", "fields": [{"name": "a", "type": "int"}]})


def tree_mb(path: Path) -> float:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) / 2**20


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--cached", action="store_true", help="use the normal cache")
    args = parser.parse_args()

    fresh = None if args.cached else tempfile.mkdtemp(prefix="headbits-registry-bench-")
    if fresh:
        os.environ[schema_registry.CACHE_ENV] = fresh
    try:
        began = time.monotonic()
        app = schema_registry.build_app()
        build_s = time.monotonic() - began
        cache_mb = tree_mb(app.parent.parent)
        starts, rss, register_ms = [], [], []
        for _ in range(args.starts):
            began = time.monotonic()
            registry = schema_registry.start()
            starts.append(time.monotonic() - began)
            try:
                began = time.monotonic()
                SchemaRegistryClient({"url": registry.url}).register_schema(
                    "bench-value", Schema(SCHEMA, "AVRO"))
                register_ms.append((time.monotonic() - began) * 1000)
                rss.append(rss_mb(registry.pid))
            finally:
                registry.stop()
    finally:
        if fresh:
            shutil.rmtree(fresh, ignore_errors=True)

    figures = {
        "apicurio_version": schema_registry.APICURIO_VERSION,
        "api_path": schema_registry.API_PATH,
        "fresh_build": not args.cached,
        "build_s": round(build_s, 1),
        "cache_mb": round(cache_mb, 1),
        "start_s": [round(value, 1) for value in starts],
        "start_median_s": round(statistics.median(starts), 1),
        "first_register_ms": [round(value, 1) for value in register_ms],
        "rss_mb": [round(value) for value in rss],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(f"{'build (fetch + Quarkus build)':32} {figures['build_s']:>8} s")
    print(f"{'cache on disk':32} {figures['cache_mb']:>8} MB")
    print(f"{'start until the API answers':32} {figures['start_s']} s")
    print(f"{'first registration':32} {figures['first_register_ms']} ms")
    print(f"{'RSS after one registration':32} {figures['rss_mb']} MB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
