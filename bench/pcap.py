"""Capture ingestion speed: packets and connections per second through `read_capture`.

Usage: python bench/pcap.py CAPTURE_OR_DIRECTORY [...] [--n 64]
Directories are searched for *.pcap and *.pcapng. The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import time

from headbits.collector.pcap import expand_captures, iter_captures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("captures", nargs="+")
    parser.add_argument("--n", type=int, default=64)
    args = parser.parse_args()
    paths = expand_captures(args.captures)
    packets = heads = errors = skipped = 0
    started = time.perf_counter()
    for read in iter_captures(paths, n=args.n):
        packets += read.packets
        heads += len(read.heads)
        errors += len(read.errors)
        skipped += sum(read.skipped.values())
    seconds = time.perf_counter() - started
    figures = {
        "files": len(paths),
        "packets": packets,
        "heads": heads,
        "skipped_packets": skipped,
        "errors": errors,
        "seconds": round(seconds, 3),
        "packets_per_second": round(packets / seconds),
        "heads_per_second": round(heads / seconds),
    }
    print(f"{len(paths)} captures, {packets} packets, {heads} heads in {seconds:.2f} s")
    print(f"{figures['packets_per_second']} packets/s, {figures['heads_per_second']} heads/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
