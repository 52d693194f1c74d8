"""Featurizer core and in-process inference speed, against the capstone's `content_to_features`.

Measured on one core (the process is pinned to one CPU and numpy to one thread), in batches of
BATCH_ROWS heads as the services see them:
  pack          pack_heads: per-direction lists of byte strings (the .v1 records) -> HeadBatch
  core          the .v2 featurizer's packing (pack_head_columns: the Arrow binary columns of a
                decoded heads batch -> packed bytes) + unpack_bits (the bits the model unpacks
                in its graph), the target
  list core     pack_heads + unpack_bits: the same from byte-string lists (the .v1 path)
  packed input  HeadBatch from an already-packed buffer (the features topic) + unpack_bits
  model_inputs  float32 bits*mask and mask from a packed HeadBatch (evaluations, baselines)
  capstone      content_to_features(hex_line, N) per row (originator only, so half our work)
Then, on every core again: rows/s of SavedModelBackend on a freshly trained tiny model.

Usage: python bench/featurize.py [--rows 200000]. Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: single-thread figures per core

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from headbits.common.columnar import pack_head_columns
from headbits.featurizer.bits import HeadBatch, model_inputs, pack_heads, unpack_bits
from headbits.featurizer.compat import content_to_features

BATCH_ROWS = 4096
CAPSTONE_ROWS = 20_000
INFERENCE_N = 16
REPEATS = 7
TARGET_CORE_ROWS_PER_S = 3_000_000
TARGET_RATIO = 200


def synthetic_heads(rows: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """Heads shaped like real openings (TLS records, HTTP lines, SSH banners, DNS, random) with
    lengths from 0 to 64 bytes, so every padding and cutting branch is exercised."""
    rng = np.random.default_rng(seed)
    noise = rng.bytes(64 * rows + 64)
    openings = [
        bytes.fromhex("160301020001") + noise[:58],
        b"GET /index.html HTTP/1.1\r\nHost: example.org\r\nUser-Agent: x\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
        bytes.fromhex("abcd01000001000000000000076578616d706c65036f72670000010001"),
        b"220 mail.example.org ESMTP Postfix (Debian/GNU)\r\n",
    ]
    kinds = rng.integers(0, len(openings) + 1, size=rows)
    lengths = rng.integers(0, 65, size=(rows, 2))
    orig, resp = [], []
    for row in range(rows):  # building the input, not part of any measurement
        start = 64 * row
        base = openings[kinds[row]] if kinds[row] < len(openings) else noise[start : start + 64]
        orig.append(base[: lengths[row, 0]])
        resp.append(noise[start + 1 : start + 1 + lengths[row, 1]])
    return orig, resp


def rows_per_second(rows: int, run: Callable[[], object]) -> float:
    """Best of REPEATS runs, as timeit advises: on a shared machine the fastest run is the one
    least disturbed by other work; slower ones measure the neighbours."""
    timings = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return rows / min(timings)


def chunks(items: list, size: int) -> list:
    return [items[i : i + size] for i in range(0, len(items), size)]


def featurizer_figures(orig: list[bytes], resp: list[bytes], n: int) -> dict[str, float]:
    rows = len(orig)
    orig_chunks, resp_chunks = chunks(orig, BATCH_ROWS), chunks(resp, BATCH_ROWS)
    packed = [pack_heads(o, r, n) for o, r in zip(orig_chunks, resp_chunks, strict=True)]
    buffers = [(b.head_bytes.tobytes(), b.head_lengths.tobytes()) for b in packed]
    hex_lines = [head.hex() for head in orig[:CAPSTONE_ROWS]]

    def pack() -> None:
        for o, r in zip(orig_chunks, resp_chunks, strict=True):
            pack_heads(o, r, n)

    columns = [(pa.array(o, pa.binary()), pa.array(r, pa.binary()))
               for o, r in zip(orig_chunks, resp_chunks, strict=True)]

    def core() -> None:
        for o, r in columns:
            unpack_bits(pack_head_columns(o, r, n)[0])

    def list_core() -> None:
        for o, r in zip(orig_chunks, resp_chunks, strict=True):
            unpack_bits(pack_heads(o, r, n).head_bytes)

    def packed_input() -> None:
        for head_bytes, head_lengths in buffers:
            batch = HeadBatch(np.frombuffer(head_bytes, np.uint8).reshape(-1, 2 * n),
                              np.frombuffer(head_lengths, np.int32).reshape(-1, 2))
            unpack_bits(batch.head_bytes)

    def inputs() -> None:
        for batch in packed:
            model_inputs(batch)

    def capstone() -> None:
        for line in hex_lines:
            content_to_features(line, n)

    figures = {
        "pack_rows_per_s": rows_per_second(rows, pack),
        "core_rows_per_s": rows_per_second(rows, core),
        "list_core_rows_per_s": rows_per_second(rows, list_core),
        "packed_input_rows_per_s": rows_per_second(rows, packed_input),
        "model_inputs_rows_per_s": rows_per_second(rows, inputs),
        "capstone_rows_per_s": rows_per_second(len(hex_lines), capstone),
    }
    figures["core_vs_capstone"] = figures["core_rows_per_s"] / figures["capstone_rows_per_s"]
    return figures


def inference_figures(orig: list[bytes], resp: list[bytes], seed: int) -> dict[str, float]:
    """Train a tiny model on a few thousand rows, export it, and time the loaded SavedModel."""
    from headbits.scorer.inprocess import SavedModelBackend
    from headbits.trainer.export import export_model
    from headbits.trainer.model import TENSORFLOW_THREADS, TrainingConfig, train

    batch = pack_heads(orig[: 3 * BATCH_ROWS], resp[: 3 * BATCH_ROWS], INFERENCE_N)
    labels = (batch.head_bytes[:, 0] % 2).astype(np.int32)
    config = TrainingConfig(n=INFERENCE_N, hidden_sizes=(64, 32), bottleneck=16, max_epochs=2,
                            min_threshold_rows=100, seed=seed)
    trained = train(batch.select(slice(0, 2 * BATCH_ROWS)), labels[: 2 * BATCH_ROWS], ("a", "b"),
                    batch.select(slice(2 * BATCH_ROWS, None)), labels[2 * BATCH_ROWS :], config,
                    progress=False)
    scored = batch.select(slice(0, BATCH_ROWS))
    with tempfile.TemporaryDirectory() as base:
        backend = SavedModelBackend(export_model(trained, Path(base)))
        backend.score(scored)  # warm-up: the first call traces and allocates
        rate = rows_per_second(BATCH_ROWS * 10, lambda: [backend.score(scored) for _ in range(10)])
        backend.close()
    return {"n": INFERENCE_N, "batch_rows": BATCH_ROWS, "rows_per_s": rate,
            "tensorflow_threads": TENSORFLOW_THREADS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="heads per measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    orig, resp = synthetic_heads(args.rows, args.seed)
    all_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(all_cpus)})
    featurizer = {f"n{n}": featurizer_figures(orig, resp, n) for n in (8, 16, 32, 64)}
    os.sched_setaffinity(0, all_cpus)
    inference = inference_figures(orig, resp, args.seed)

    print(f"featurizer, one core, batches of {BATCH_ROWS} rows, {args.rows} rows (rows/s)")
    names = ("pack", "core", "list_core", "packed_input", "model_inputs", "capstone")
    print(f"{'N':>4} " + " ".join(f"{name:>14}" for name in names) + f" {'core/capstone':>14}")
    for key, figures in featurizer.items():
        cells = " ".join(f"{figures[f'{name}_rows_per_s']:>14,.0f}" for name in names)
        print(f"{key[1:]:>4} {cells} {figures['core_vs_capstone']:>13.0f}x")
    core_32 = featurizer["n32"]["core_rows_per_s"]
    worst_ratio = min(f["core_vs_capstone"] for f in featurizer.values())
    print(f"target: core >= {TARGET_CORE_ROWS_PER_S:,} rows/s at N=32: "
          f"{'met' if core_32 >= TARGET_CORE_ROWS_PER_S else 'MISSED'}; "
          f">= {TARGET_RATIO}x the capstone at every N: "
          f"{'met' if worst_ratio >= TARGET_RATIO else 'MISSED'}")
    print(f"inference: SavedModelBackend, N={inference['n']}, batch {BATCH_ROWS}, "
          f"{inference['tensorflow_threads']} TF threads: {inference['rows_per_s']:,.0f} rows/s")
    print(json.dumps({"rows": args.rows, "batch_rows": BATCH_ROWS,
                      "min_core_vs_capstone": round(worst_ratio, 1),
                      "load_average_1min": os.getloadavg()[0], "featurizer": featurizer,
                      "inference": inference}))


if __name__ == "__main__":
    main()
