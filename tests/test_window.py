"""The trainer's window sample: per-stratum uniform reservoirs within a row budget, by uid."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from headbits.trainer.window import Reservoir, StratifiedReservoir, water_level


def rows(protocol: str, sensor: str, count: int, start: int = 0) -> list[dict]:
    return [{"uid": f"{protocol}-{sensor}-{i}", "expected_protocol": protocol, "sensor": sensor}
            for i in range(start, start + count)]


@given(st.lists(st.integers(0, 500), max_size=12), st.integers(1, 2000))
def test_water_level_fills_the_budget_and_never_more(demands, budget):
    level = water_level(demands, budget)
    used = sum(min(d, level) for d in demands)
    assert level >= 1
    if sum(demands) <= budget:
        assert used == sum(demands), "everything fits: nothing is sampled away"
        assert level + sum(demands) - max(demands, default=0) == max(budget, 1)
    else:
        assert used <= max(budget, len(demands))  # at least one row per stratum
        if level > 1:
            assert sum(min(d, level + 1) for d in demands) > budget, "the level is the largest"


@given(st.lists(st.integers(0, 300), min_size=1, max_size=8), st.integers(1, 1000),
       st.lists(st.integers(0, 50), min_size=1, max_size=8))
def test_water_level_only_falls_as_demands_grow(demands, budget, growth):
    grown = [d + growth[i % len(growth)] for i, d in enumerate(demands)]
    assert water_level(grown, budget) <= water_level(demands, budget)


def test_small_strata_are_kept_whole_and_large_ones_share_the_rest():
    sample = StratifiedReservoir(budget_rows=1000, seed=3)
    stream = rows("tls", "s1", 20_000) + rows("dns", "s1", 5_000) + rows("ssh", "s1", 40) \
        + rows("modbus", "s2", 7)
    np.random.default_rng(0).shuffle(stream)
    for start in range(0, len(stream), 997):
        sample.add(stream[start : start + 997])
    kept = Counter(r["expected_protocol"] for r in sample.items)
    assert kept["ssh"] == 40 and kept["modbus"] == 7, "rare protocols are never sampled away"
    assert kept["tls"] == kept["dns"] == (1000 - 47) // 2
    assert len(sample.items) <= 1000
    assert sample.seen == len(stream)
    assert sample.strata()["modbus@s2"] == {"seen": 7, "kept": 7}


def test_a_repeated_uid_is_sampled_once():
    sample = StratifiedReservoir(budget_rows=100, seed=1)
    first = rows("http", "s1", 30)
    sample.add(first)
    sample.add(first[:10] + rows("http", "s1", 5, start=30))  # redelivered records
    sample.add(first[:3] + first[:3])
    uids = [r["uid"] for r in sample.items]
    assert len(uids) == len(set(uids)) == 35
    assert sample.duplicates == 16


def test_each_stratum_sample_is_uniform_over_its_rows():
    kept = np.zeros(200)
    for seed in range(300):
        sample = StratifiedReservoir(budget_rows=40, seed=seed)
        for start in range(0, 200, 13):
            sample.add(rows("tls", "s1", min(13, 200 - start), start)
                       + rows("dns", "s1", min(13, 200 - start), start))
        for record in sample.items:
            if record["expected_protocol"] == "tls":
                kept[int(record["uid"].rsplit("-", 1)[1])] += 1
    # 20 of 200 tls rows kept: each with probability 1/10, 30 times in 300 draws (sd ~5).
    assert kept.min() > 10 and kept.max() < 55
    assert abs(kept[:100].sum() - kept[100:].sum()) < 400, "early and late rows alike"


@given(st.lists(st.integers(), max_size=200), st.integers(1, 40), st.integers(1, 40))
def test_shrink_keeps_distinct_items_of_the_stream(items, capacity, smaller):
    reservoir = Reservoir(capacity, seed=2)
    reservoir.add(items)
    before = list(reservoir.items)
    dropped = reservoir.shrink(min(capacity, smaller))
    assert len(reservoir.items) == min(len(items), capacity, smaller)
    assert sorted(reservoir.items + dropped) == sorted(before)
