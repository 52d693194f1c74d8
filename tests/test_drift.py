"""Drift of calibrated tail probabilities: flat means no drift, piled up means drift."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from headbits.scorer.drift import DriftMonitor, Ring, uniform_psi


def test_uniform_tail_probabilities_show_no_drift_and_novel_traffic_does():
    rng = np.random.default_rng(4)
    assert uniform_psi(rng.uniform(size=5000)) < 0.02
    novel = np.concatenate([rng.uniform(size=3000), rng.uniform(0, 0.01, size=2000)])
    assert uniform_psi(novel) > 0.25
    simpler = rng.uniform(0.5, 1.0, size=5000)  # traffic easier than the calibration's
    assert uniform_psi(simpler) > 0.25


@given(st.lists(st.floats(0, 1), min_size=1, max_size=300))
def test_psi_is_finite_and_never_negative(values):
    psi = uniform_psi(np.array(values))
    assert np.isfinite(psi) and psi >= 0


@given(st.lists(st.lists(st.floats(0, 1), max_size=40), max_size=20), st.integers(1, 50))
def test_ring_keeps_the_last_values(batches, capacity):
    ring = Ring(capacity)
    everything: list[float] = []
    for batch in batches:
        ring.extend(np.array(batch))
        everything += batch
    expected = np.array(everything[-capacity:], dtype=np.float32)
    assert sorted(ring.values().tolist()) == sorted(expected.tolist())
    assert ring.total == len(everything)


def test_monitor_flags_the_slice_that_drifted_only():
    rng = np.random.default_rng(5)
    monitor = DriftMonitor(window_rows=2000, min_rows=300, target_rate=0.01)
    for _ in range(10):
        protocols = rng.choice(["tls", "dns"], 400)
        sensors = np.where(rng.uniform(size=400) < 0.5, "zeek-1", "zeek-2")
        tail = rng.uniform(size=400)
        novel = (protocols == "dns") & (sensors == "zeek-2")
        tail[novel] = rng.uniform(0, 0.005, novel.sum())  # a new protocol behind dns on zeek-2
        monitor.observe(protocols.tolist(), sensors.tolist(), tail)
    report = {(d.kind, d.key): d for d in monitor.report()}
    assert report[("protocol", "dns")].crossed and report[("sensor", "zeek-2")].crossed
    assert not report[("protocol", "tls")].crossed and not report[("sensor", "zeek-1")].crossed
    assert report[("protocol", "dns")].low_tail_share > 0.4
    assert report[("protocol", "tls")].rows == 2000, "the window holds the last rows only"


@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("xy"), st.floats(0, 1)),
                max_size=60), st.integers(1, 8))
def test_each_slice_keeps_its_own_last_rows_of_a_mixed_batch(rows, window):
    monitor = DriftMonitor(window_rows=window, min_rows=1)
    if rows:
        protocols, sensors, tail = zip(*rows, strict=True)
        monitor.observe(np.array(protocols, dtype=object), list(sensors), np.array(tail))
    slices = [(drift.kind, drift.key) for drift in monitor.report()]
    for kind, key in slices:
        column = 0 if kind == "protocol" else 1
        mine = [np.float32(row[2]) for row in rows if row[column] == key]
        assert monitor.window(kind, key).tolist() == mine[-window:], "its last rows, in order"
    assert {key for (_, key) in slices} == {r[0] for r in rows} | {r[1] for r in rows}


def test_too_few_rows_never_cross():
    monitor = DriftMonitor(window_rows=1000, min_rows=500)
    monitor.observe(["tls"] * 100, ["s"] * 100, np.zeros(100))
    (protocol, sensor) = monitor.report()
    assert protocol.psi > 0.25 and not protocol.crossed and not sensor.crossed


def test_the_scorer_writes_drift_records_every_interval(tmp_path):
    """A real (tiny) model scores real feature records; the reporter turns its tail
    probabilities into drift records that the drift schema accepts, on its clock only."""
    from headbits.common.avro import ValueCodec
    from headbits.featurizer.transform import feature_records
    from headbits.scorer.alert_rules import Verdicts, head_batch
    from headbits.scorer.inprocess import SavedModelBackend
    from headbits.scorer.service import DriftReporter
    from tests.serving_models import export_versions
    from tests.source_helpers import make_heads

    backend = SavedModelBackend(export_versions(tmp_path, versions=(1,)) / "headbits" / "1")
    now = [0.0]
    reporter = DriftReporter(DriftMonitor(window_rows=100, min_rows=10), "drift", 60.0,
                             clock=lambda: now[0])
    records = feature_records(make_heads(50))
    records[0]["orig_gap"] = True  # a midstream head: scored, but no evidence of drift
    scores = backend.score(head_batch(records, backend.info().n))
    verdicts = Verdicts.of(records, scores)
    sensors = [record["sensor"] for record in records]
    assert reporter.observe(sensors, scores, verdicts) == [], "not due before the interval"
    now[0] = 61.0
    drifts = reporter.observe(sensors, scores, verdicts)
    backend.close()
    assert {(d["kind"], d["key"]) for d in drifts} >= {("sensor", "zeek-1")}
    sensor = next(d for d in drifts if d["kind"] == "sensor")
    assert sensor["rows"] == 2 * 49, "both batches, without the midstream row"
    assert sensor["model_version"] == 1
    codec = ValueCodec("drift", "drift")
    assert codec.decode(codec.encode(sensor), codec.headers)["psi"] == sensor["psi"]
    now[0] = 62.0
    assert reporter.observe(sensors, scores, verdicts) == [], "next one a whole interval later"
