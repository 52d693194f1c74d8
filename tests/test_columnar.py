"""The `.v2` batch format and the column-by-column featurizer and scorer, without a broker.

The columnar paths must decide exactly as the per-record (`.v1`) paths do: the same feature
records, the same rejections worded the same way, the same scores and verdicts.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headbits.common.avro import DecodeError, load_schema
from headbits.common.columnar import (
    MAX_MESSAGE_BYTES,
    RowDecoder,
    batch_schema,
    decode_table,
    encode_batches,
    encode_table,
    encode_within,
    fixed_width,
    is_batch,
    objects_table,
    pack_head_columns,
    records_table,
    table_of,
)
from headbits.featurizer.bits import pack_heads
from headbits.featurizer.transform import featurize, featurize_table
from headbits.scorer.alert_rules import (
    Verdicts,
    check_features,
    check_features_table,
    head_batch,
    head_batch_table,
    last_per_uid,
    last_per_uid_rows,
    score_dicts,
    score_table,
    verdicts_of_table,
)
from headbits.scorer.backend import ModelInfo, Scores
from tests.source_helpers import make_heads


def test_every_batched_schema_follows_its_avro_fields():
    for name in ("payload_head", "features", "score"):
        schema = batch_schema(name)
        assert schema.arrow.names == [f["name"] for f in load_schema(name)["fields"]]
        assert not any(field.nullable for field in schema.arrow)
        assert schema.headers[0][1].endswith(b"Batch")
    assert len({batch_schema(n).fingerprint for n in ("payload_head", "features", "score")}) == 3


def test_round_trip_and_strictness():
    heads = make_heads(50)
    table = objects_table("payload_head", heads)
    value = encode_table(table)
    assert is_batch(value, batch_schema("payload_head").headers) and is_batch(value, None)
    decoded = decode_table("payload_head", value)
    assert decoded.table.equals(table) and decoded.rejected == []
    assert decoded.table.to_pylist() == [h.to_dict() | {"services": list(h.services)}
                                         for h in heads]
    with pytest.raises(DecodeError, match="bad Arrow"):
        decode_table("payload_head", value[:-40])
    with pytest.raises(DecodeError, match="bad Arrow"):
        decode_table("payload_head", b"\xff\xff\xff\xffgarbage")
    with pytest.raises(DecodeError, match="empty"):
        decode_table("payload_head", None)
    retyped = table.set_column(table.schema.get_field_index("orig_p"), "orig_p",
                               pa.array(range(50), pa.int64()))
    with pytest.raises(DecodeError, match=r"orig_p.*int64"):
        decode_table("payload_head", encode_table(retyped))
    with pytest.raises(DecodeError, match="column 'uid' is missing"):
        decode_table("payload_head", encode_table(table.drop_columns(["uid"])))


def with_null_uid(rows: int, row: int) -> tuple[pa.Table, list]:
    """Heads as a table whose uid is null in `row`, and its uid column."""
    table = objects_table("payload_head", make_heads(rows))
    nullable = pa.schema([field.with_nullable(True) for field in table.schema])
    uids = table.column("uid").to_pylist()
    uids[row] = None
    return table.cast(nullable).set_column(0, pa.field("uid", pa.string()), pa.array(uids)), uids


def test_a_null_is_a_bad_row_and_the_rest_of_the_batch_decodes():
    broken, uids = with_null_uid(5, 2)
    decoded = decode_table("payload_head", encode_table(broken))
    assert decoded.rejected == [(2, "field 'uid' is null")]
    assert decoded.rows.tolist() == [0, 1, 3, 4]
    assert decoded.table.column("uid").to_pylist() == [u for u in uids if u is not None]


def test_a_row_decoder_reads_one_field_of_either_format_as_its_rows_do():
    broken, _ = with_null_uid(5, 1)
    decoder = RowDecoder("payload_head", "t.heads")
    batch, headers = encode_table(broken), batch_schema("payload_head").headers
    assert decoder.column(batch, headers, "uid") == [r["uid"] for r in decoder.rows(batch, headers)]
    assert decoder.column(batch, headers, "orig_p") == [r["orig_p"] for r in
                                                       decoder.rows(batch, headers)]
    assert decoder.bad_rows == 4, "the null row is counted by each of the four reads"
    record = decoder.records.encode(make_heads(1)[0].to_dict())
    assert decoder.column(record, decoder.records.headers, "uid") == [make_heads(1)[0].uid]


def test_a_column_added_later_takes_its_default_in_older_batches():
    """A Score batch written before `reason` (a field with a default) existed still decodes."""
    table = table_of("score", _score_columns(3), 3)
    decoded = decode_table("score", encode_table(table.drop_columns(["reason"])))
    assert decoded.table.column("reason").to_pylist() == ["", "", ""]
    extra = table.append_column("from_the_future", pa.array([1, 2, 3]))
    assert decode_table("score", encode_table(extra)).table.equals(table), "unknown: ignored"


def _score_columns(rows: int) -> dict:
    return {"uid": [f"u{i}" for i in range(rows)], "ts": [1.0] * rows, "score": [0.5] * rows,
            "threshold": [1.0] * rows, "orig_error": [0.1] * rows, "resp_error": [0.2] * rows,
            "model_name": ["m"] * rows, "model_version": [1] * rows,
            "predicted_protocol": ["http"] * rows, "predicted_probability": [0.9] * rows,
            "expected_protocol": ["http"] * rows, "alert": [False] * rows}


@given(st.integers(1, 40), st.integers(300, 6000))
@settings(max_examples=25, deadline=None)
def test_wide_batches_are_split_within_the_byte_bound_in_order(rows, max_bytes):
    table = objects_table("payload_head", make_heads(rows))
    slices = list(encode_within(table, max_bytes))
    assert [start for _, start, _ in slices] == [0, *[stop for _, _, stop in slices[:-1]]]
    assert slices[-1][2] == rows, "the slices cover the table, in order"
    for value, start, stop in slices:
        assert len(value) <= max_bytes or stop - start == 1
        decoded = decode_table("payload_head", value).table
        assert decoded.column("uid").to_pylist() == table.column("uid")[start:stop].to_pylist()


def test_a_collector_sized_batch_of_long_heads_fits_a_kafka_message():
    heads = [dataclasses.replace(head, orig_head=bytes(range(256)) * 4, resp_head=b"\xff" * 1024)
             for head in make_heads(2000)]
    table = objects_table("payload_head", heads)
    messages = list(encode_batches(table, table.column("sensor"), max_rows=2000))
    assert len(messages) > 1 and all(len(value) <= MAX_MESSAGE_BYTES for _, value, _ in messages)
    assert sum(rows for _, _, rows in messages) == 2000


def test_batches_are_one_sensor_each_in_order_and_bounded():
    heads = make_heads(10)
    sensors = ["a", "b", "a", "c", "a", "b", "a", "a", "c", "a"]
    table = objects_table("payload_head", heads)
    table = table.set_column(2, "sensor", pa.array(sensors))
    messages = list(encode_batches(table, table.column("sensor"), max_rows=3))
    seen = []
    for sensor, value, count in messages:
        rows = decode_table("payload_head", value).table
        assert set(rows.column("sensor").to_pylist()) == {sensor} and rows.num_rows <= 3
        assert count == rows.num_rows
        seen += rows.column("uid").to_pylist()
    for sensor in "abc":
        expected = [h.uid for h, s in zip(heads, sensors, strict=True) if s == sensor]
        assert [u for u in seen if u in expected] == expected, "a sensor's rows keep their order"
    assert sorted(seen) == sorted(h.uid for h in heads)


heads_lists = st.lists(st.tuples(st.binary(max_size=80), st.binary(max_size=80)),
                       min_size=1, max_size=40)


@given(heads_lists, st.sampled_from([8, 16, 32, 64]), st.integers(0, 3))
@settings(max_examples=60, deadline=None)
def test_packing_from_arrow_buffers_equals_packing_lists(rows, n, skip):
    orig = pa.array([o for o, _ in rows], pa.binary()).slice(min(skip, len(rows) - 1))
    resp = pa.array([r for _, r in rows], pa.binary()).slice(min(skip, len(rows) - 1))
    expected = pack_heads(orig.to_pylist(), resp.to_pylist(), n)
    head_bytes, orig_lengths, resp_lengths = pack_head_columns(orig, resp, n)
    np.testing.assert_array_equal(head_bytes, expected.head_bytes)
    np.testing.assert_array_equal(np.minimum(orig_lengths, n), expected.head_lengths[:, 0])
    np.testing.assert_array_equal(np.minimum(resp_lengths, n), expected.head_lengths[:, 1])
    assert fixed_width(pa.array([], pa.binary()), n)[0].shape == (0, n)


def _bad_records() -> list[dict]:
    records = [h.to_dict() for h in make_heads(12)]
    records[1]["orig_p"] = 70000
    records[3]["transport"] = "sctp"
    records[5]["uid"] = ""
    records[7]["resp_head"] = b"x" * 65
    records[7]["resp_bytes_seen"] = 65
    records[9]["orig_bytes_seen"] = 3
    records[10]["services"] = ["http", "ssl"]
    records[11]["resp_p"] = 443
    return records


def test_featurize_table_packs_and_rejects_exactly_as_featurize():
    records = _bad_records()
    expected, expected_rejected = featurize(records)
    features, rejected = featurize_table(records_table("payload_head", records))
    assert rejected == expected_rejected and len(rejected) == 5
    assert features.to_pylist() == expected
    assert featurize_table(records_table("payload_head", []))[0].num_rows == 0


def _scores(rows: int, seed: int = 0) -> Scores:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), rows).astype(np.float32)
    return Scores(
        reconstruction_error=rng.random(rows, np.float32),
        direction_error=rng.random((rows, 2), np.float32),
        protocol_probs=probs, threshold=np.full(rows, 0.5, np.float32),
        novelty_score=rng.random(rows, np.float32),
        tail_probability=rng.choice(np.array([0.0005, 0.5], np.float32), rows),
        top_bytes=np.zeros((rows, 2, 4), np.int32),
        model=ModelInfo("headbits", 3, 16, ("dns", "http", "unknown")))


def test_scoring_a_table_decides_as_scoring_records():
    records, _ = featurize([h.to_dict() for h in make_heads(40)])
    for index, record in enumerate(records):
        record["expected_protocol"] = ("dns", "http", "unknown", "ssh")[index % 4]
        record["orig_gap"] = index % 7 == 0
    records.append(dict(records[3]))  # a duplicate uid: its last record counts
    records[5] = records[5] | {"n": 8}  # narrower than the model
    table = table_of("features", {k: [r[k] for r in records] for k in records[0]}, len(records))

    latest = last_per_uid_rows(table)
    assert latest.tolist() == last_per_uid(records)
    assert check_features_table(table, 16) == [
        (row, check_features(records[row], 16)) for row in range(len(records))
        if check_features(records[row], 16)]
    good = [row for row in latest.tolist() if check_features(records[row], 16) is None]
    kept = table.take(pa.array(good))
    kept_records = [records[row] for row in good]
    batch = head_batch_table(kept, 16)
    expected_batch = head_batch(kept_records, 16)
    np.testing.assert_array_equal(batch.head_bytes, expected_batch.head_bytes)
    np.testing.assert_array_equal(batch.head_lengths, expected_batch.head_lengths)

    scores = _scores(len(good))
    verdicts = verdicts_of_table(kept, scores)
    expected = Verdicts.of(kept_records, scores)
    for name in ("novel", "anomalous", "mismatch", "midstream", "alerting"):
        np.testing.assert_array_equal(getattr(verdicts, name), getattr(expected, name))
    assert verdicts.alerting.any() and not verdicts.alerting.all()
    rows = score_table(kept, scores, verdicts).to_pylist()
    dicts = score_dicts(kept_records, scores, expected)
    assert [set(r) for r in rows] == [{f["name"] for f in load_schema("score")["fields"]}] * len(
        rows)
    for row, record in zip(rows, dicts, strict=True):
        assert row.keys() >= record.keys()
        assert {k: row[k] for k in record} == pytest.approx(record)
