"""The services' pure parts and the Kafka value codecs, without a broker."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from headbits.common.avro import DecodeError, ValueCodec, load_schema
from headbits.common.records import InvalidRecord, PayloadHead
from headbits.featurizer.bits import pack_heads
from headbits.featurizer.transform import featurize
from headbits.scorer.alert_rules import (
    ANOMALOUS_BYTES,
    NOVEL_PROTOCOL,
    PROTOCOL_MISMATCH,
    AlertRule,
    check_features,
    head_batch,
    last_per_uid,
    score_records,
)
from headbits.scorer.backend import ModelInfo, Scores

SCHEMAS = Path(__file__).parents[1] / "services" / "common" / "schemas"


def make_head(uid: str, orig: bytes = b"GET / HTTP/1.1\r\n", resp: bytes = b"HTTP/1.1 200",
              resp_p: int = 80, services: tuple[str, ...] = (),
              resp_gap: bool = True) -> PayloadHead:
    return PayloadHead(uid, 1700000000.5, "s1", "10.0.0.1", 40000, "10.0.0.2", resp_p, "tcp",
                       services, orig, resp, len(orig), len(resp), False, resp_gap)


def test_codec_round_trip_and_strictness():
    codec = ValueCodec("payload_head", "heads")
    head = make_head("C1")
    value = codec.encode(head.to_dict())
    assert PayloadHead.from_dict(codec.decode(value, codec.headers)) == head
    with pytest.raises(DecodeError, match="bytes after the record"):
        codec.decode(value + b"\0", codec.headers)
    with pytest.raises(DecodeError, match="bad Avro"):
        codec.decode(value[:10], codec.headers)
    with pytest.raises(DecodeError, match="no headbits-schema-fingerprint header"):
        codec.decode(value, None)
    other = ValueCodec("deadletter", "dl")
    with pytest.raises(DecodeError, match="wrong schema"):
        codec.decode(value, other.headers)
    with pytest.raises(DecodeError, match="tombstone"):
        codec.decode(None, codec.headers)


def test_every_topic_schema_loads_with_a_distinct_fingerprint():
    names = ("payload_head", "features", "alert", "score", "deadletter")
    fingerprints = {ValueCodec(name, name).fingerprint for name in names}
    assert len(fingerprints) == len(names)
    assert all(load_schema(name)["name"].startswith("headbits.v1.") for name in names)


def test_featurize_packs_at_64_and_rejects_contract_breakers():
    good = make_head("C1", services=("ssl",), resp_p=8443)
    oversize = make_head("C2", orig=b"x" * 65)
    broken = good.to_dict()
    del broken["sensor"]
    features, rejected = featurize([good.to_dict(), oversize.to_dict(), broken])
    assert [index for index, _ in rejected] == [1, 2]
    assert "65 bytes" in rejected[0][1] and "'sensor' is missing" in rejected[1][1]
    (record,) = features
    expected = pack_heads([good.orig_head], [good.resp_head], 64)
    assert record["head_bytes"] == expected.head_bytes.tobytes()
    assert (record["orig_length"], record["resp_length"]) == (16, 12)
    assert (record["expected_protocol"], record["expected_source"]) == ("tls", "zeek")
    assert record["n"] == 64 and record["resp_gap"] is True


def _scores(errors, thresholds, probs, direction, tails=None, top_bytes=None,
            classes=("http", "tls", "unknown")):
    rows = len(errors)
    tails = [0.5] * rows if tails is None else tails
    top_bytes = np.tile(np.arange(4), (rows, 2, 1)) if top_bytes is None else top_bytes
    return Scores(np.array(errors, np.float32), np.array(direction, np.float32),
                  np.array(probs, np.float32), np.array(thresholds, np.float32),
                  np.array(tails, np.float32) * 10, np.array(tails, np.float32),
                  np.array(top_bytes, np.int32), ModelInfo("headbits", 7, 16, classes))


def test_alerts_for_each_reason_and_midstream_only_when_allowed():
    heads = [make_head("A", resp_gap=False), make_head("B", resp_gap=False),
             make_head("C", resp_p=9999, resp_gap=False), make_head("D", resp_gap=False),
             make_head("E", resp_p=9999, resp_gap=False), make_head("F", resp_p=9999)]
    features, _ = featurize([h.to_dict() for h in heads])
    batch = head_batch(features, 16)
    assert batch.head_bytes.shape == (6, 32)
    top = np.tile(np.arange(4), (6, 2, 1))
    top[0, 1] = [15, 11, 2, 0]  # resp head of A has 12 bytes: offset 15 is absent, not evidence
    scores = _scores(
        errors=[0.9, 0.1, 0.1, 0.1, 0.1, 0.1], thresholds=[0.5] * 6,
        probs=[[1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]],
        direction=[[0.2, 0.8]] + [[0.1, 0.1]] * 5,
        tails=[0.5, 0.5, 0.5, 0.5, 0.0005, 0.0005], top_bytes=top,
    )
    alerts, everything = score_records(features, batch, scores)
    by_uid = {alert["uid"]: alert for alert in alerts}
    # C's port expects nothing ("unknown"), so predicting tls there is no mismatch; E fits none
    # of the learned traffic whatever its port; F does too, but its start was not seen.
    assert sorted(by_uid) == ["A", "B", "E"]
    assert by_uid["A"]["reason"] == ANOMALOUS_BYTES and by_uid["A"]["direction"] == "resp"
    assert by_uid["A"]["deviating_offsets"] == [11, 2, 0]
    assert by_uid["B"]["reason"] == PROTOCOL_MISMATCH
    assert by_uid["E"]["reason"] == NOVEL_PROTOCOL and by_uid["E"]["tail_probability"] > 0
    assert by_uid["A"]["orig_head"] == heads[0].orig_head[:16]
    assert by_uid["A"]["resp_head"] == heads[0].resp_head[:12]
    assert [s["alert"] for s in everything] == [True, True, False, False, True, False]
    assert [s["midstream"] for s in everything] == [False] * 5 + [True]
    assert everything[5]["reason"] == "" and everything[4]["reason"] == NOVEL_PROTOCOL
    assert by_uid["A"]["model_version"] == 7 and by_uid["A"]["model_n"] == 16

    allowed, _ = score_records(features, batch, scores, AlertRule(alert_midstream=True))
    assert {a["uid"]: a["reason"] for a in allowed}["F"] == NOVEL_PROTOCOL
    looser, _ = score_records(features, batch, scores, AlertRule(alert_rate=0.6))
    assert {a["uid"] for a in looser} == {"A", "B", "C", "D", "E"}
    with pytest.raises(ValueError, match="alert rate"):
        AlertRule(alert_rate=0.0)


def test_alert_and_score_records_fit_their_schemas():
    """Every field the rule writes is in the schema, and the new fields have defaults, so a
    registry in BACKWARD mode accepts the grown schemas and old records still decode."""
    import fastavro

    heads = [make_head("A", resp_gap=False)]
    features, _ = featurize([h.to_dict() for h in heads])
    batch = head_batch(features, 16)
    scores = _scores([0.9], [0.5], [[1, 0, 0]], [[0.2, 0.8]], tails=[0.0001])
    alerts, everything = score_records(features, batch, scores)
    from headbits.scorer.emit import AlertEmitter

    alerts = AlertEmitter().emit([f["sensor"] for f in features], alerts, everything).alerts
    for name, record in (("alert", alerts[0]), ("score", everything[0])):
        schema = json.loads((SCHEMAS / f"{name}.avsc").read_text())
        parsed = fastavro.parse_schema(schema)
        written = {field["name"] for field in schema["fields"]}
        if name == "score":  # written only when a rule suppressed the alert (default "")
            written.discard("suppressed_by")
        assert set(record) == written
        assert fastavro.validate(record, parsed)
        old = {**schema, "fields": [f for f in schema["fields"] if "default" not in f]}
        stream = io.BytesIO()
        fastavro.schemaless_writer(stream, fastavro.parse_schema(old),
                                   {k: record[k] for k in (f["name"] for f in old["fields"])})
        stream.seek(0)
        decoded = fastavro.schemaless_reader(stream, fastavro.parse_schema(old), parsed)
        assert decoded["tail_probability"] == 1.0 and decoded["midstream"] is False
        if name == "alert":
            assert (decoded["count"], decoded["severity"], decoded["community_id"]) == (
                1, "medium", "")
        else:
            assert decoded["suppressed_by"] == ""


def test_wrong_n_is_refused_and_duplicates_scored_once():
    features, _ = featurize([make_head("A").to_dict(), make_head("A").to_dict()])
    assert last_per_uid(features) == [1]
    short = {**features[0], "head_bytes": features[0]["head_bytes"][:100]}
    assert "wrong N" in check_features(short, 16)
    assert "wrong N" in check_features({**features[0], "n": 12}, 16)
    assert check_features(features[0], 16) is None


@pytest.mark.parametrize("change", [
    {"uid": ""}, {"transport": "sctp"}, {"orig_p": -1}, {"resp_p": 65536}, {"ts": True},
    {"orig_head": b"x" * 65, "orig_bytes_seen": 65}, {"resp_bytes_seen": 3}, {"orig_gap": 1},
    {"orig_p": "80"}, {"services": None}, {"resp_head": bytearray(b"HTTP")},
])
def test_batch_screen_decides_and_words_like_payloadhead(change):
    """featurize screens whole columns; every verdict must be PayloadHead's own, in its words."""
    records = [make_head(f"C{i}").to_dict() for i in range(5)]
    records[2] |= change
    features, rejected = featurize([dict(record) for record in records])
    expected = []
    for index, record in enumerate(records):
        try:
            PayloadHead.from_dict(record).validate()
        except InvalidRecord as error:
            expected.append((index, f"invalid PayloadHead: {error}"))
    assert rejected == expected
    assert [f["uid"] for f in features] == [
        r["uid"] for i, r in enumerate(records) if i not in dict(expected)]
