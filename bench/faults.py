"""Inject faults at random points of a live pipeline, many times, and print what it kept.

Usage: python bench/faults.py [--runs 22] [--heads 3000] [--rate 150] [--overload-seconds 60]
       [--seed N] [--work-dir DIR] [--no-trainer]
One pipeline (its own Kafka broker, the TF Serving stand-in with a tiny model, featurizer and
scorer; `headbits.devtools.faults`) takes `--runs` runs: each replays `--heads` fresh heads
through the collector at `--rate` per second plus 3 bad records, with one fault drawn from every
kind in turn (shuffled) at a random point. Then an overload run (10x `--rate` for
`--overload-seconds`) and, unless `--no-trainer`, a trainer run into an unwritable model
repository (counted as a fault) and one into the same repository writable again.
A run that breaks an invariant is printed with the violation, and counted, not fatal.
The last line is one JSON object: runs, faults (per kind), uids_in, uids_lost, max_recovery_s,
duplicate_alert_ratio (alerts beyond the first per uid / all alerts), overload_peak_rss_mb
(collector and featurizer; the scorer loads TensorFlow), overload_recovery_s, plus violations
and the trainer outcome.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from headbits.devtools.faults import (
    FAULT_KINDS,
    FaultPipeline,
    InvariantError,
    RunResult,
    run_once,
    run_trainer,
    summary,
)

OVERLOAD_FACTOR = 10


def row(result: RunResult) -> str:
    rss = max(result.peak_rss_mb.get(name, 0.0) for name in ("collector", "featurizer"))
    return (f"{result.run:>4} {result.fault:<18} {result.uids_in:>7} {result.uids_lost:>5} "
            f"{result.fault_s:>7.1f} {result.recovery_s:>9.1f} {result.alerts:>6} "
            f"{result.duplicate_alerts:>5} {result.dead_letters:>4} {rss:>7.1f}  "
            f"{'; '.join(result.violations) or 'ok'}")


def trainer_figures(pipeline: FaultPipeline) -> dict:
    failed = run_trainer(pipeline, read_only=True)
    error = next((line.get("error", "") for line in failed.lines if line.get("msg") == "failed"),
                 "")
    published = run_trainer(pipeline, read_only=False)
    return {
        "unwritable_exit": failed.code, "unwritable_error": error,
        "repository_unchanged": failed.after == failed.before,
        "writable_exit": published.code, "versions_after": published.after[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2 * len(FAULT_KINDS))
    parser.add_argument("--heads", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--overload-seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--no-trainer", action="store_true")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else time.time_ns() % 2**32
    rng = np.random.default_rng(seed)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="headbits-faults-"))
    print(f"seed {seed}; work dir {work_dir}")
    kinds = [str(kind) for _ in range(-(-args.runs // len(FAULT_KINDS)))
             for kind in rng.permutation(FAULT_KINDS)][:args.runs]
    started = time.monotonic()
    pipeline = FaultPipeline(work_dir)
    print(f"pipeline up in {time.monotonic() - started:.0f} s")
    print(f"{'run':>4} {'fault':<18} {'uids':>7} {'lost':>5} {'fault_s':>7} {'recover_s':>9} "
          f"{'alerts':>6} {'dups':>5} {'dead':>4} {'rss_mb':>7}  invariants")
    results, broken = [], []
    trainer = None
    try:
        for run, kind in enumerate(kinds):
            try:
                result = run_once(pipeline, run, kind, rng, args.heads, args.rate)
            except InvariantError as error:
                broken.append(f"run {run} ({kind}): {error}")
                print(f"{run:>4} {kind:<18} {error}")
                continue
            results.append(result)
            broken += [f"run {run} ({kind}): {text}" for text in result.violations]
            print(row(result), flush=True)
        rate = OVERLOAD_FACTOR * args.rate
        overload = run_once(pipeline, len(kinds), None, rng, int(rate * args.overload_seconds),
                            rate, recovery_timeout=600)
        broken += [f"overload: {text}" for text in overload.violations]
        print(row(overload), f"(overload: {rate:g}/s for {args.overload_seconds:g} s)")
        if not args.no_trainer:
            trainer = trainer_figures(pipeline)
            print(f"trainer, unwritable repository: {trainer}")
    finally:
        pipeline.close()
    figures = summary(results, overload)
    figures["runs"], figures["faults"] = len(kinds), dict(Counter(kinds))
    if trainer is not None:
        figures["faults"]["repository-unwritable"] = 1
        figures["trainer"] = trainer
    figures["violations"] = broken
    figures["seconds"] = round(time.monotonic() - started)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
