"""`headbits <verb>`: one entry point whose verbs live with the stage they belong to.

Each verb is a module with `configure(parser)` (adds its options; the parser's description is the
module docstring) and `run(args) -> int` (the exit code). Modules are imported
only when their verb runs, so `headbits collector` never loads TensorFlow.

Exit codes: 0 success, 1 the work failed (the message says why), 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import tempfile
from types import ModuleType

from headbits import __version__
from headbits.common.settings import SettingsError

VERBS: dict[str, tuple[str, str]] = {
    "demo": ("headbits.devtools.demo", "generate traffic, train, score and report, no cluster"),
    "generate": ("headbits.traffic.command", "labelled heads from real protocols"),
    "train": ("headbits.trainer.train", "train and export a model version"),
    "eval": ("headbits.trainer.evaluate", "evaluate a model against labelled captures"),
    "score": ("headbits.scorer.offline", "score captures offline, most anomalous first"),
    "replay": ("headbits.devtools.zeek_replay", "publish captures as Zeek would"),
    "collector": ("headbits.collector.service", "run the collector service"),
    "featurizer": ("headbits.featurizer.service", "run the featurizer service"),
    "scorer": ("headbits.scorer.service", "run the scorer service"),
    "trainer": ("headbits.trainer.service", "run the trainer service"),
    "model": ("headbits.trainer.rollout", "list, promote and roll back model versions"),
    "rollout": ("headbits.trainer.controller", "promote a soaked canary, roll back a bad stable"),
    "alerts": ("headbits.scorer.alerts_command", "read alerts, mark them benign or malicious"),
    "rules": ("headbits.scorer.rules_command", "add, list and remove suppression rules"),
    "convert": ("headbits.common.convert", "convert a retained .v1 topic window to .v2 batches"),
    "serving-standin": ("headbits.devtools.tfserving_standin", "TF Serving stand-in (development)"),
    "kafka-dev": ("headbits.devtools.kafka_broker", "a local single-node Kafka for development"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headbits",
        description="Detect anomalous network protocols from the first payload bytes.",
    )
    parser.add_argument("--version", action="version", version=f"headbits {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, summary) in VERBS.items():
        verbs.add_parser(verb, help=summary, add_help=False)
    return parser


# What TensorFlow's C++ runtime prints when it is imported, before its logging is configured
# (so TF_CPP_MIN_LOG_LEVEL cannot silence it): facts about the build, nothing to act on.
TENSORFLOW_STARTUP = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow"
)


def import_quietly(name: str) -> ModuleType:
    """Import a verb's module with TensorFlow's start-up lines left out of stderr.

    The module is imported with file descriptor 2 captured; afterwards every captured line that
    is not one of TensorFlow's start-up notices is written to stderr, so a real warning or an
    import error still shows, and `headbits train --help` shows only the help.
    """
    if "tensorflow" in sys.modules:
        return importlib.import_module(name)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            return importlib.import_module(name)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not TENSORFLOW_STARTUP.match(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def _verb_parser(verb: str):
    module = import_quietly(VERBS[verb][0])
    doc = (module.__doc__ or VERBS[verb][1]).strip()
    parser = argparse.ArgumentParser(
        prog=f"headbits {verb}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.configure(parser)
    return module, parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in VERBS:
        build_parser().parse_args(argv or ["--help"])
        return 2
    try:
        module, parser = _verb_parser(argv[0])
    except ModuleNotFoundError as error:
        # A service image carries only its own stage (the Dockerfile removes the rest).
        if not (error.name or "").startswith("headbits."):
            raise
        print(f"headbits {argv[0]}: not available in this installation ({error.name} is not "
              "installed; service images carry only their own verbs)", file=sys.stderr)
        return 1
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except SettingsError as error:
        print(f"headbits {argv[0]}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
