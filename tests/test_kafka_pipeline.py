"""The streaming services against a real Kafka broker (the session's `kafka_bootstrap`).

Each service runs as its own process, exactly as `headbits <service>` runs in production, with
its own topics and consumer groups per test. The scorer uses a tiny model trained here on heads
from shared captures and exported as a real SavedModel version.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka.admin import ConfigResource

from headbits.common.avro import ValueCodec
from headbits.common.kafka import KafkaSettings, Producer, admin
from headbits.common.protocols import expected_protocol
from headbits.common.records import PayloadHead
from headbits.devtools.harness import ServiceProcess, Topics, read_topic
from headbits.featurizer.bits import pack_heads
from tests.source_helpers import produce_heads

pytestmark = pytest.mark.kafka

CAPTURES = ("ndpi/teams.pcap", "ndpi/wechat.pcap", "ndpi/netflix.pcap")
MODEL_N = 16



def topic_config(settings: KafkaSettings, name: str, key: str) -> str:
    """One config value of a topic as the broker reports it (e.g. "retention.ms")."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    client = admin(settings)  # kept referenced until the future resolves
    return client.describe_configs([resource])[resource].result()[key].value


@pytest.fixture(scope="module")
def capture_heads(shared_pcaps: Path) -> tuple[list[Path], list[PayloadHead]]:
    from headbits.collector.pcap import read_capture

    paths = [shared_pcaps / name for name in CAPTURES]
    heads = [head for path in paths for head in read_capture(path, n=64).heads]
    assert len({h.uid for h in heads}) == len(heads) > 150
    return paths, heads


@pytest.fixture(scope="module")
def model_version_dir(tmp_path_factory, capture_heads) -> Path:
    """A tiny real model (N=16), trained on the capture heads and exported as version 1."""
    from headbits.trainer.export import export_model
    from headbits.trainer.model import TrainingConfig, train

    _, heads = capture_heads
    labels = [expected_protocol(h.services, h.transport, h.resp_p).protocol for h in heads]
    classes = tuple(sorted(set(labels)))
    indices = np.array([classes.index(label) for label in labels])
    batch = pack_heads([h.orig_head for h in heads], [h.resp_head for h in heads], 64)
    config = TrainingConfig(n=MODEL_N, max_epochs=3, target_fpr=0.1, min_threshold_rows=20,
                            hidden_sizes=(64, 32), bottleneck=16)
    trained = train(batch, indices, classes, batch, indices, config, progress=False)
    return export_model(trained, tmp_path_factory.mktemp("models"), version=1)


def offline_scores(version_dir: Path, heads: list[PayloadHead]) -> dict[str, dict]:
    """What `headbits score` computes for these heads, by uid."""
    from headbits.scorer.inprocess import SavedModelBackend
    from headbits.scorer.offline import score_heads

    backend = SavedModelBackend(version_dir)
    try:
        return {row["uid"]: row for row in score_heads(heads, backend)}
    finally:
        backend.close()


def test_devkafka_topics_get_retention_from_settings(kafka_bootstrap):
    topics = Topics(kafka_bootstrap)
    assert topic_config(topics.settings, topics["alerts"], "retention.ms") == str(90 * 86400000)
    assert topic_config(topics.settings, topics["heads"], "retention.ms") == str(7 * 86400000)


def test_replayed_capture_is_scored_exactly_as_offline(
    kafka_bootstrap, capture_heads, model_version_dir, tmp_path
):
    paths, heads = capture_heads
    topics = Topics(kafka_bootstrap)
    featurizer = ServiceProcess("featurizer", topics.env, tmp_path)
    scorer = ServiceProcess("scorer", topics.env, tmp_path, "--model-dir", str(model_version_dir),
                            "--write-scores", "true")
    featurizer.wait_started()
    scorer.wait_started()
    collector = ServiceProcess("collector", topics.env, tmp_path, "--source", "replay",
                               "--captures", ",".join(map(str, paths)))
    assert collector.process.wait(60) == 0, collector.log_path.read_text()[-2000:]

    uids = {h.uid for h in heads}
    scores = read_topic(topics.settings, topics["scores"], "score",
                        lambda got: {s["uid"] for s in got} >= uids)
    expected = offline_scores(model_version_dir, heads)
    online = {s["uid"]: s for s in scores}
    assert set(online) == uids
    for uid, offline in expected.items():
        assert online[uid]["score"] == pytest.approx(offline["score"], rel=1e-5, abs=1e-6)
        assert online[uid]["threshold"] == pytest.approx(offline["threshold"], rel=1e-6)
        assert online[uid]["predicted_protocol"] == offline["predicted_protocol"]
        assert online[uid]["alert"] == bool(offline["reason"])
        assert online[uid]["model_version"] == 1

    flagged = {uid for uid, offline in expected.items() if offline["reason"]}
    assert flagged, "the tiny model flags nothing: the alert check would prove nothing"
    alerts = read_topic(topics.settings, topics["alerts"], "alert",
                        lambda got: {a["uid"] for a in got} >= flagged, timeout=20)
    assert {a["uid"] for a in alerts} == flagged
    assert {a["uid"]: a["reason"] for a in alerts} == {u: expected[u]["reason"] for u in flagged}
    by_uid = {h.uid: h for h in heads}
    for alert in alerts:
        head = by_uid[alert["uid"]]
        assert (alert["orig_h"], alert["orig_p"], alert["resp_h"], alert["resp_p"]) == (
            head.orig_h, head.orig_p, head.resp_h, head.resp_p)
        assert alert["orig_head"] == head.orig_head[:MODEL_N]
        assert alert["reason"]
    assert featurizer.stop() == 0
    assert scorer.stop() == 0
    assert "stopped" in {line["msg"] for line in scorer.log_lines()}


def synthetic_heads(count: int, seed: int) -> list[PayloadHead]:
    rng = np.random.default_rng(seed)
    return [
        PayloadHead(f"K{i:06d}", 1.7e9 + i, "synthetic", "10.1.0.1", 1024 + i % 50000, "10.1.0.2",
                    443 if i % 2 else 80, "tcp", (), rng.bytes(24), rng.bytes(40), 24, 40,
                    False, False)
        for i in range(count)
    ]


def test_sigkilled_collector_loses_no_uid(kafka_bootstrap, tmp_path):
    """A collector killed mid-replay and started again delivers every head (some twice)."""
    from headbits.common.avro import write_heads_file

    topics = Topics(kafka_bootstrap)
    heads = synthetic_heads(20000, seed=4)
    heads_file = tmp_path / "heads.avro"
    write_heads_file(heads_file, heads)
    args = ("--source", "heads-file", "--heads-files", str(heads_file), "--replay-rate", "4000")
    collector = ServiceProcess("collector", topics.env, tmp_path, *args)
    read_topic(topics.settings, topics["heads"], "payload_head", lambda got: len(got) >= 2000)
    assert collector.stop(signal.SIGKILL) == -signal.SIGKILL
    before_restart = read_topic(topics.settings, topics["heads"], "payload_head",
                                lambda got: False, timeout=3)
    assert len(before_restart) < len(heads), "the collector was not killed mid-stream"
    collector = ServiceProcess("collector", topics.env, tmp_path, *args[:-2])
    assert collector.process.wait(120) == 0, collector.log_tail()
    uids = {h.uid for h in heads}
    delivered = read_topic(topics.settings, topics["heads"], "payload_head",
                           lambda got: {r["uid"] for r in got} >= uids)
    assert {r["uid"] for r in delivered} == uids


def test_sigkilled_services_lose_no_uid(kafka_bootstrap, model_version_dir, tmp_path):
    topics = Topics(kafka_bootstrap)
    heads = synthetic_heads(30000, seed=3)
    small_batches = ("--batch-size", "200")
    featurizer = ServiceProcess("featurizer", topics.env, tmp_path, *small_batches)
    scorer_args = ("--model-dir", str(model_version_dir), "--write-scores", "true", *small_batches)
    scorer = ServiceProcess("scorer", topics.env, tmp_path, *scorer_args)
    featurizer.wait_started()
    scorer.wait_started()
    produce_heads(topics.settings, topics["heads"], heads)

    read_topic(topics.settings, topics["scores"], "score", lambda got: len(got) >= 2000)
    assert featurizer.stop(signal.SIGKILL) == -signal.SIGKILL
    assert scorer.stop(signal.SIGKILL) == -signal.SIGKILL
    featurizer = ServiceProcess("featurizer", topics.env, tmp_path, *small_batches)
    scorer = ServiceProcess("scorer", topics.env, tmp_path, *scorer_args)
    uids = {h.uid for h in heads}
    scores = read_topic(topics.settings, topics["scores"], "score",
                        lambda got: {s["uid"] for s in got} >= uids, timeout=180)
    assert {s["uid"] for s in scores} == uids
    assert featurizer.stop() == 0
    assert scorer.stop() == 0


def _deadletter_inputs(topic: str) -> list[tuple[str, bytes, list | None, str]]:
    """(case, value, headers, reason fragment) for each bad-input class on the heads topic."""
    heads_codec = ValueCodec("payload_head", topic)
    good = PayloadHead("DL-good", 1.7e9, "s", "10.0.0.1", 1, "10.0.0.2", 80, "tcp", (),
                       b"GET /", b"HTTP/1.1", 5, 8, False, False)
    value = heads_codec.encode(good.to_dict())
    missing = ValueCodec("deadletter", topic).encode({
        "service": "x", "source_topic": "x", "source_partition": 0, "source_offset": 0,
        "origin": "", "reason": "", "key": None, "value": b"", "ts": 0.0,
    })
    oversize = good.to_dict() | {"uid": "DL-big", "orig_head": b"A" * 80, "orig_bytes_seen": 80}
    return [
        ("bad avro", b"\xff\xfe garbage", heads_codec.headers, "bad Avro"),
        ("no header", value, None, "no headbits-schema-fingerprint header"),
        ("wrong schema", missing, ValueCodec("deadletter", "x").headers, "wrong schema"),
        ("missing fields", value[:12], heads_codec.headers, "bad Avro"),
        ("oversize head", heads_codec.encode(oversize), heads_codec.headers, "more than the limit"),
        ("good", value, heads_codec.headers, ""),
    ]


def test_every_bad_input_class_is_dead_lettered_and_the_service_goes_on(
    kafka_bootstrap, model_version_dir, tmp_path
):
    topics = Topics(kafka_bootstrap)
    featurizer = ServiceProcess("featurizer", topics.env, tmp_path)
    scorer = ServiceProcess("scorer", topics.env, tmp_path, "--model-dir", str(model_version_dir),
                            "--write-scores", "true")
    started = featurizer.wait_started()
    scorer.wait_started()
    producer = Producer(topics.settings)
    cases = _deadletter_inputs(topics["heads"])
    for case, value, headers, _ in cases:
        producer.produce(topics["heads"], value, case, headers)
    features_codec = ValueCodec("features", topics["features"])
    wrong_n = features_codec.encode({
        "uid": "DL-n", "ts": 1.0, "sensor": "s", "orig_h": "a", "orig_p": 1, "resp_h": "b",
        "resp_p": 2, "transport": "tcp", "expected_protocol": "http", "expected_source": "port",
        "n": 8, "head_bytes": bytes(16), "orig_length": 8, "resp_length": 0,
        "orig_gap": False, "resp_gap": False,
    })
    producer.produce(topics["features"], wrong_n, "DL-n", features_codec.headers)
    producer.flush()

    bad = len(cases) - 1
    letters = read_topic(topics.settings, topics["deadletter"], "deadletter",
                         lambda got: len(got) >= bad + 1, timeout=60)
    assert len(letters) == bad + 1
    from_featurizer = [letter for letter in letters if letter["service"] == "featurizer"]
    assert len(from_featurizer) == bad
    for letter in from_featurizer:
        case = letter["key"].decode()
        (reason_fragment,) = [c[3] for c in cases if c[0] == case]
        assert reason_fragment in letter["reason"], (case, letter["reason"])
        assert letter["source_topic"] == topics["heads"] and letter["source_offset"] >= 0
    (scorer_letter,) = [letter for letter in letters if letter["service"] == "scorer"]
    assert "wrong N" in scorer_letter["reason"] and scorer_letter["source_topic"] == topics[
        "features"]
    scores = read_topic(topics.settings, topics["scores"], "score",
                        lambda got: any(s["uid"] == "DL-good" for s in got), timeout=30)
    assert "DL-good" in {s["uid"] for s in scores}

    metrics = _scrape(started["metrics_port"])
    assert 'headbits_dead_lettered_records_total{reason="bad Avro",service="featurizer"} 2.0' \
        in metrics
    assert 'headbits_consumed_records_total{service="featurizer"} 6.0' in metrics
    assert featurizer.process.poll() is None and scorer.process.poll() is None
    assert featurizer.stop() == 0
    assert scorer.stop() == 0


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_a_bad_row_is_dead_lettered_alone_and_the_rest_of_its_batch_is_scored(
    kafka_bootstrap, model_version_dir, tmp_path
):
    """`.v2` batches: a row that breaks the contract and a row with a null are dead-lettered
    with their place in the batch; the other rows of the same message are scored, and an
    undecodable batch is dead-lettered whole."""
    import pyarrow as pa

    from headbits.common.columnar import batch_schema, decode_table, encode_table, objects_table

    topics = Topics(kafka_bootstrap)
    featurizer = ServiceProcess("featurizer", topics.env, tmp_path)
    scorer = ServiceProcess("scorer", topics.env, tmp_path, "--model-dir", str(model_version_dir),
                            "--write-scores", "true")
    featurizer.wait_started()
    scorer.wait_started()
    heads = synthetic_heads(20, seed=9)
    table = objects_table("payload_head", heads)
    ports = table.column("orig_p").to_pylist()
    ports[4] = 70000
    uids = table.column("uid").to_pylist()
    uids[7] = None
    nullable = pa.schema([field.with_nullable(True) for field in table.schema])
    table = table.cast(nullable)
    table = table.set_column(table.schema.get_field_index("orig_p"), "orig_p",
                             pa.array(ports, pa.int32()))
    table = table.set_column(0, pa.field("uid", pa.string()), pa.array(uids))
    headers = batch_schema("payload_head").headers
    producer = Producer(topics.settings)
    producer.produce(topics["heads"], encode_table(table), "sensor-x", headers)
    producer.produce(topics["heads"], b"\xff\xff\xff\xff not arrow", "sensor-x", headers)
    producer.flush()

    letters = read_topic(topics.settings, topics["deadletter"], "deadletter",
                         lambda got: len(got) >= 3, timeout=60)
    by_reason = {letter["reason"]: letter for letter in letters}
    assert len(letters) == 3, sorted(by_reason)
    bad_port = next(r for r in by_reason if "orig_p=70000" in r)
    assert bad_port.endswith("(row 4 of the batch)")
    assert decode_table("payload_head", by_reason[bad_port]["value"]).table.column(
        "uid").to_pylist() == [heads[4].uid], "the letter carries that row alone"
    assert "field 'uid' is null (row 7 of the batch)" in by_reason
    assert any(r.startswith("bad Arrow batch") for r in by_reason)
    expected = {h.uid for i, h in enumerate(heads) if i not in (4, 7)}
    scores = read_topic(topics.settings, topics["scores"], "score",
                        lambda got: {s["uid"] for s in got} >= expected, timeout=60)
    assert {s["uid"] for s in scores} == expected
    assert featurizer.stop() == 0
    assert scorer.stop() == 0


def test_convert_moves_a_retained_v1_window_to_v2_batches(kafka_bootstrap):
    from headbits.cli import main
    from headbits.featurizer.transform import featurize

    topics = Topics(kafka_bootstrap)
    heads = synthetic_heads(300, seed=4)
    features, _ = featurize([h.to_dict() for h in heads])
    codec = ValueCodec("features", topics["features"])
    producer = Producer(topics.settings)
    producer.produce_many(topics["features"], codec.encode_many(features),
                          [f["uid"] for f in features], codec.headers)
    producer.produce(topics["features"], b"garbage", "x", codec.headers)
    producer.flush()
    target = f"{topics['features']}-converted"
    code = main(["convert", "--bootstrap-servers", kafka_bootstrap, "--kind", "features",
                 "--from-topic", topics["features"], "--features-topic", target,
                 "--batch-rows", "100"])
    assert code == 0
    converted = read_topic(topics.settings, target, "features",
                           lambda got: len(got) >= len(features), timeout=30)
    positions = {record.pop("_position") for record in converted}
    assert len(positions) < len(converted) / 50, "rows travel as batches of up to 100"
    by_uid = {record["uid"]: record for record in features}
    assert len(converted) == len(features)
    assert all(record == by_uid[record["uid"]] for record in converted)


def test_every_large_batch_message_is_delivered(kafka_bootstrap):
    """`.v2` messages of a few hundred kB each, produced back to back: every one arrives."""
    from headbits.common.columnar import batch_schema, encode_batches, objects_table
    from headbits.common.kafka import window_offsets

    heads = synthetic_heads(2000, seed=8)
    table = objects_table("payload_head", heads)
    ((_, value, _),) = encode_batches(table, table.column("sensor"), 2000)
    assert len(value) > 200_000
    for _ in range(3):
        topics = Topics(kafka_bootstrap, partitions=4)
        producer = Producer(topics.settings)
        for number in range(40):
            producer.produce(topics["heads"], value, f"sensor-{number % 16}",
                             batch_schema("payload_head").headers)
        producer.flush()
        ends = window_offsets(topics.settings, topics["heads"], since_ms=0)
        assert sum(end for _, end in ends.values()) == 40
