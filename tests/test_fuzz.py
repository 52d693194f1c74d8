"""Every decoder that takes bytes from outside, fuzzed with hypothesis (headbits.devtools.fuzzing).

The default run feeds each decoder a few hundred generated inputs (random, and real or well-formed
inputs mutated, truncated and extended); the `fuzz_long` mode (`pytest -m fuzz_long`) 10,000
each, and `bench/fuzz.py` prints the figures. A crash fails the test with hypothesis's shrunk
input.
"""

from __future__ import annotations

import pytest

from headbits.devtools.fuzzing import ACCEPTED, REJECTED, decoders, run_cases
from tests.conftest import SHARED_PCAPS

CORPUS = SHARED_PCAPS if (SHARED_PCAPS / "LABELS.tsv").is_file() else None
DECODERS = {decoder.name: decoder for decoder in decoders(CORPUS)}
DEFAULT_CASES = 300
LONG_CASES = 10_000


def check(name: str, cases: int) -> None:
    outcome = run_cases(DECODERS[name], cases, catch=False)
    assert outcome.cases >= min(cases, 200), f"hypothesis ran only {outcome.cases} cases"
    assert set(outcome.outcomes) <= {ACCEPTED, REJECTED}
    assert outcome.outcomes[REJECTED] > 0, "the inputs never reached a rejection"


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_accepts_or_rejects_never_crashes(name: str) -> None:
    check(name, DEFAULT_CASES)


@pytest.mark.fuzz_long
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_survives_ten_thousand_cases(name: str) -> None:
    check(name, LONG_CASES)


def test_real_captures_are_among_the_pcap_seeds() -> None:
    if CORPUS is None:
        pytest.skip(f"shared capture corpus not found at {SHARED_PCAPS} (see README: Data)")
    from headbits.devtools.fuzzing import SEED_CAPTURES, capture_seeds

    assert len(capture_seeds(CORPUS)) == len(capture_seeds(None)) + len(SEED_CAPTURES)


def test_broker_values_are_fuzzed_where_the_bindings_are() -> None:
    from headbits.devtools.fuzzing import broker_available

    if not broker_available():
        pytest.skip("Broker's Python bindings are not importable (scripts/link-broker.sh)")
    assert "broker_value" in DECODERS
