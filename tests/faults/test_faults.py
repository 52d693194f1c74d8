"""Faults at random points of a live pipeline on real Kafka, and the invariants it keeps.

The default run injects a few faults drawn at random (one short run each), a short overload and
the trainer's unwritable repository; `pytest -m faults_long` runs every fault kind several times
(bench/faults.py prints the figures of such a series).
"""

from __future__ import annotations

import pytest

from headbits.devtools.faults import (
    FAULT_KINDS,
    LAG_RECOVERED,
    overload_run,
    run_once,
    run_trainer,
)

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

RATE = 150  # heads per second the pipeline sustains here with room to spare
SHORT_HEADS = 1500
OVERLOAD_RATE = 25_000
RSS_LIMIT_MB = 200


def assert_kept(result) -> None:
    assert result.violations == [], result
    assert result.uids_lost == 0
    assert result.dead_letters >= 3, "the bad records were not dead-lettered"


def test_random_faults_keep_the_invariants(pipeline, rng):
    kinds = [str(kind) for kind in rng.choice(FAULT_KINDS, size=2, replace=False)]
    for run, kind in enumerate(kinds):
        result = run_once(pipeline, run, kind, rng, SHORT_HEADS, RATE)
        print(result)
        assert_kept(result)
        assert result.fault_s > 0


@pytest.mark.faults_long
@pytest.mark.parametrize("kind", FAULT_KINDS)
@pytest.mark.parametrize("repeat", range(3))
def test_every_fault_kind_keeps_the_invariants(pipeline, rng, kind, repeat):
    result = run_once(pipeline, 100 + repeat * len(FAULT_KINDS) + FAULT_KINDS.index(kind), kind,
                      rng, 4 * SHORT_HEADS, RATE)
    print(result)
    assert_kept(result)


def test_overload_keeps_memory_bounded_and_recovers(pipeline, rng):
    """A 2 s burst of `.v2` batches straight into the heads topic (asked for 25,000 heads/s;
    60 s at 10x the sustainable rate in bench/faults.py): nothing is lost, the featurizer's
    memory stays bounded and lag is back under 1,000 records. Whether the pipeline holds a
    sustained 10x overload is bench/faults.py's figure, not this test's."""
    result = overload_run(pipeline, 900, rng, OVERLOAD_RATE, seconds=2)
    print(result)
    assert_kept(result)
    assert result.uids_in >= 5000, "the burst produced too little to load anything"
    assert 0 < result.peak_rss_mb["featurizer"] <= RSS_LIMIT_MB, result.peak_rss_mb
    assert result.recovery_s < 180, f"lag took {result.recovery_s} s to fall under {LAG_RECOVERED}"


def test_an_unwritable_model_repository_fails_the_trainer_and_changes_nothing(pipeline, rng):
    """The trainer says what it could not write and exits 1; the served repository is left as it
    was (the scorer keeps its model); once writable again the same run publishes a version."""
    assert_kept(run_once(pipeline, 800, None, rng, 1200, 1200))  # feature rows to train on
    failed = run_trainer(pipeline, read_only=True)
    assert failed.code == 1, failed.lines[-5:]
    (line,) = [line for line in failed.lines if line.get("msg") == "failed"]
    assert "ermission" in line["error"] or "not permitted" in line["error"], line
    assert str(pipeline.serving_config.parent) in line["error"], line
    assert failed.after == failed.before
    published = run_trainer(pipeline, read_only=False)
    assert published.code == 0, published.lines[-5:]
    versions, config = published.after
    assert versions == ["1", "2"] and "canary" in config
