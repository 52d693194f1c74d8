"""Fuzz every decoder that takes bytes from outside and count what happened.

Usage: python bench/fuzz.py [--cases 10000] [--corpus ../shared/data/pcaps] [--seed N]
                            [--decoders NAME ...]
Each decoder of `headbits.devtools.fuzzing` gets `--cases` hypothesis-generated inputs; a crash
(an exception outside the decoder's contract) is counted, not fatal, and the first few are
printed. `dead_lettered` counts rejected inputs of decoders whose rejections become dead letters
(Kafka values, collector source events); each such rejection was encoded as a dead letter.
The last line is one JSON object: cases, crashes, dead_lettered, each per decoder and in total.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from headbits.devtools.fuzzing import REJECTED, decoders, run_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/pcaps"))
    parser.add_argument("--seed", type=int, default=None, help="default: derandomized")
    parser.add_argument("--decoders", nargs="+", default=None, metavar="NAME",
                        help="only these (default: every decoder)")
    args = parser.parse_args()
    corpus = args.corpus if (args.corpus / "LABELS.tsv").is_file() else None
    if corpus is None:
        print(f"no capture corpus at {args.corpus}: pcap seeds are the crafted captures only")
    figures: dict[str, dict[str, int]] = {"cases": {}, "crashes": {}, "dead_lettered": {}}
    print(f"{'decoder':<22} {'cases':>7} {'accepted':>9} {'rejected':>9} {'crashes':>8} {'s':>6}")
    chosen = decoders(corpus)
    if args.decoders:
        unknown = set(args.decoders) - {decoder.name for decoder in chosen}
        if unknown:
            parser.error(f"unknown decoders {sorted(unknown)}; known: "
                         f"{sorted(decoder.name for decoder in chosen)}")
        chosen = [decoder for decoder in chosen if decoder.name in args.decoders]
    for decoder in chosen:
        started = time.monotonic()
        outcome = run_cases(decoder, args.cases, catch=True, seed=args.seed)
        seconds = time.monotonic() - started
        rejected = outcome.outcomes[REJECTED]
        figures["cases"][decoder.name] = outcome.cases
        figures["crashes"][decoder.name] = outcome.crash_count
        figures["dead_lettered"][decoder.name] = rejected if decoder.dead_letters else 0
        print(f"{decoder.name:<22} {outcome.cases:>7} {outcome.outcomes['accepted']:>9} "
              f"{rejected:>9} {outcome.crash_count:>8} {seconds:>6.1f}", flush=True)
        for error, value in outcome.crashes:
            print(f"    crash: {error}\n      input: {value}")
    for key in ("cases", "crashes", "dead_lettered"):
        figures[key]["total"] = sum(figures[key].values())
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
