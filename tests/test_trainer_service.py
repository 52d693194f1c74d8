"""`headbits trainer`: one retraining on a retained window of a real Kafka topic, gated, labelled.

The window holds feature records of traffic from real protocol implementations (the project's
generator), spread over the last day on two sensors; before it, records older than the window;
inside it, undecodable values and port-labelled connections whose port lies (SSH on 443, ...).
The first run is the CronJob's process; later runs call the verb in this process (the same code,
without a second TensorFlow start-up).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from hypothesis import given
from hypothesis import strategies as st
from tensorflow_serving.config import model_server_config_pb2

from headbits.cli import main
from headbits.common.avro import ValueCodec
from headbits.common.kafka import KafkaSettings, Producer, admin, ensure_topics
from headbits.common.model_repository import read_state
from headbits.common.records import PayloadHead
from headbits.devtools.harness import ServiceProcess, Topics
from headbits.featurizer.transform import feature_records
from headbits.trainer.gate import FALSE_POSITIVE_RATE, MACRO_F1, GateSettings, gate_failures
from headbits.trainer.window import Reservoir, most_recent

SESSIONS_PER_PROTOCOL = 30
DISGUISED_SESSIONS = 8
OLD_RECORDS = 25
UNDECODABLE = 3
TOO_NARROW = 2  # feature records of N=8, narrower than the model's N=16
HOLDOUT_FRACTION = 0.2
NOW = time.time()
DAY = 24 * 3600


@pytest.fixture(scope="module")
def traffic() -> tuple[list[PayloadHead], list[PayloadHead]]:
    """(Zeek-confirmed heads, port-labelled heads whose port lies), spread over the last day."""
    from headbits.traffic import generate, generate_anomalies

    rng = np.random.default_rng(5)
    confirmed = generate(sessions_per_protocol=SESSIONS_PER_PROTOCOL, seed=5, progress=False)
    disguised = generate_anomalies(DISGUISED_SESSIONS, seed=5)
    assert all(not head.services for head in disguised)

    def spread(heads: list[PayloadHead]) -> list[PayloadHead]:
        times = NOW - rng.uniform(60, DAY - 3600, len(heads))
        return [replace(head, ts=float(ts), sensor=("dmz", "core")[index % 2])
                for index, (head, ts) in enumerate(zip(heads, times, strict=True))]

    return spread(confirmed), spread(disguised)


def produce_features(
    settings: KafkaSettings, topic: str, heads: list[PayloadHead], timestamp_ms: int = 0,
    n: int = 64,
) -> None:
    codec = ValueCodec("features", topic)
    records = feature_records(heads, n)
    producer = Producer(settings)
    for record, value in zip(records, codec.encode_many(records), strict=True):
        producer.produce(topic, value, record["uid"], codec.headers, timestamp_ms=timestamp_ms)
    producer.flush()


@pytest.fixture
def window_topic(kafka_bootstrap, traffic) -> Topics:
    """A features topic: records from 3 days ago, then the last day's records and bad ones."""
    confirmed, disguised = traffic
    topics = Topics(kafka_bootstrap)
    old = [replace(head, uid=f"OLD{index:05d}", sensor="retired")
           for index, head in enumerate(confirmed[:OLD_RECORDS])]
    produce_features(topics.settings, topics["features"], old,
                     timestamp_ms=int((NOW - 3 * DAY) * 1000))
    produce_features(topics.settings, topics["features"], confirmed + disguised)
    narrow = [replace(head, uid=f"NARROW{i}") for i, head in enumerate(confirmed[:TOO_NARROW])]
    produce_features(topics.settings, topics["features"], narrow, n=8)
    producer = Producer(topics.settings)
    for index in range(UNDECODABLE):
        producer.produce(topics["features"], b"\x00 not a features record", f"BAD{index}")
    producer.flush()
    return topics


@pytest.fixture
def restore_logging():
    """The verb points the root logger at this test's stderr; later tests get theirs back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def consumer_groups(settings: KafkaSettings) -> set[str]:
    return {group.group_id for group in admin(settings).list_consumer_groups().result().valid}


def read_config(path: Path) -> tuple[list[int], dict[str, int]]:
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(path.read_text(), config)
    (model,) = config.model_config_list.config
    return sorted(model.model_version_policy.specific.versions), dict(model.version_labels)


def metadata(models: Path, version: int) -> dict:
    return json.loads((models / "headbits" / str(version) / "assets.extra" / "headbits.json")
                      .read_text())


def log_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def the_line(lines: list[dict], message: str) -> dict:
    found = [line for line in lines if line["msg"] == message]
    assert len(found) == 1, f"{message!r} logged {len(found)} times: {lines}"
    return found[0]


@pytest.mark.kafka
def test_retrain_gate_and_rollout(
    window_topic, traffic, tmp_path, monkeypatch, capsys, restore_logging
):
    confirmed, disguised = traffic
    models, config = tmp_path / "models", tmp_path / "serving" / "models.config"
    env = {
        **window_topic.env,
        "HEADBITS_MODELS_DIR": str(models),
        "HEADBITS_CONFIG_FILE": str(config),
        "HEADBITS_SETTLE_SECONDS": "0",  # no TF Serving to wait for between the two writes
        "HEADBITS_N": "16",
        "HEADBITS_MAX_EPOCHS": "40",
        "HEADBITS_MIN_CLASS_ROWS": "10",
        "HEADBITS_MIN_ROWS": "100",
        # A third of the ~40 groups for validation: thresholds and bit weights are calibrated
        # on these rows, and a fifth of a window this small leaves them to a handful of flows.
        "HEADBITS_VALIDATION_FOLDS": "3",
        "HEADBITS_HOLDOUT_FRACTION": str(HOLDOUT_FRACTION),
        # ~50 held-out rows: one alert is 2 %; the production cap (5 %) would be a coin toss here.
        "HEADBITS_MAX_FALSE_POSITIVE_RATE": "0.15",
    }

    # Run 1, the CronJob's process: nothing labelled yet, so version 1 becomes canary and stable.
    groups_before = consumer_groups(window_topic.settings)
    started = time.monotonic()
    first = ServiceProcess("trainer", env, tmp_path)
    assert first.process.wait(240) == 0, first.log_tail()
    first_seconds = time.monotonic() - started
    first.stop()
    assert consumer_groups(window_topic.settings) == groups_before, "the trainer joined a group"
    lines = first.log_lines()
    assert the_line(lines, "published")["labels"] == ["canary", "stable"]
    assert the_line(lines, "undecodable records skipped (dead-lettered upstream already)")[
        "count"] == UNDECODABLE
    assert read_state(config).labels == {"canary": 1, "stable": 1}
    assert read_config(config) == ([1], {"canary": 1, "stable": 1})

    first_version = metadata(models, 1)
    window = first_version["window"]
    assert window["records_read"] == len(confirmed) + len(disguised) + UNDECODABLE + TOO_NARROW, (
        "the records older than the window were read")
    assert window["undecodable"] == UNDECODABLE
    assert window["unusable"] == TOO_NARROW
    assert window["unusable_reasons"] == {"wrong N": TOO_NARROW}
    assert window["port_labelled_left_out"] == len(disguised)
    assert window["parser_labelled"] == window["sampled_rows"] == len(confirmed)
    training = first_version["training"]
    for split in ("train", "validation"):
        assert set(training[split]["label_sources"]) == {"zeek"}, "a port label taught the model"
    holdout_rows = first_version["metrics"]["holdout_rows"]
    assert training["train"]["rows"] + training["validation"]["rows"] + holdout_rows == len(
        confirmed)
    assert holdout_rows == math.ceil(HOLDOUT_FRACTION * len(confirmed))
    newest_trained = training["window"]["last_ts"]
    assert newest_trained < sorted(h.ts for h in confirmed)[len(confirmed) - holdout_rows], (
        "the held-out rows must be the most recent ones")
    figures = first_version["metrics"]
    assert figures[MACRO_F1] >= 0.5 and figures[FALSE_POSITIVE_RATE] <= 0.15
    assert 0.5 < figures["holdout_protocol_auroc"] <= 1.0
    assert first_version["evaluation"]["gate"] == {
        "passed": True, "failures": [], "rules": first_version["evaluation"]["gate"]["rules"]}
    assert first_version["evaluation"]["stable"] is None
    _assert_disguised_ssh_is_called_ssh(models / "headbits" / "1", disguised)

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()

    # Run 2: a candidate no worse than stable (margins wide open) becomes canary; stable stays.
    assert main(["trainer", "--max-macro-f1-drop", "1", "--max-fpr-increase", "1"]) == 0
    assert the_line(log_lines(capsys.readouterr().err), "published")["labels"] == ["canary"]
    assert read_config(config) == ([1, 2], {"canary": 2, "stable": 1})
    second = metadata(models, 2)
    assert second["evaluation"]["stable"]["version"] == 1
    assert second["evaluation"]["stable"]["metrics"][MACRO_F1] == pytest.approx(
        figures[MACRO_F1]), "stable was scored on other rows than it was at its own run"

    # Run 3: the operator's go: stable moves to the canary, no training.
    assert main(["trainer", "--promote-stable"]) == 0
    capsys.readouterr()
    assert read_config(config) == ([1, 2], {"canary": 2, "stable": 2})
    assert read_state(config).previous["stable"] == [1], "rollback must lead back to 1"

    # Run 4: a gate nobody can pass (beat stable's macro-F1 by 1): rejected, labels unmoved.
    config_before, state_before = config.read_bytes(), read_state(config).to_dict()
    assert main(["trainer", "--max-macro-f1-drop", "-1", "--max-fpr-increase", "1"]) == 0
    lines = log_lines(capsys.readouterr().err)
    rejected = the_line(lines, "candidate rejected")
    assert rejected["version"] == 3
    assert rejected["failing_metrics"] == [MACRO_F1]
    assert "published" not in {line["msg"] for line in lines}
    assert (models / "headbits" / "3").is_dir(), "a rejected version stays on disk for analysis"
    assert metadata(models, 3)["evaluation"]["gate"]["passed"] is False
    assert config.read_bytes() == config_before
    assert read_state(config).to_dict() == state_before
    print(f"trainer figures: first run {first_seconds:.1f} s as a process, "
          f"training {training['seconds']} s on {training['train']['rows']} rows")


def _assert_disguised_ssh_is_called_ssh(version_dir: Path, disguised: list[PayloadHead]) -> None:
    """SSH behind port 443: the port says TLS, the model (never taught by ports) says SSH."""
    from headbits.featurizer.bits import pack_heads
    from headbits.scorer.inprocess import SavedModelBackend

    ssh = [head for head in disguised if head.resp_head.startswith(b"SSH-")]
    assert ssh and all(head.resp_p == 443 for head in ssh)
    backend = SavedModelBackend(version_dir)
    batch = pack_heads([h.orig_head for h in ssh], [h.resp_head for h in ssh], 64)
    assert backend.score(batch).predicted_protocols() == ["ssh"] * len(ssh)
    backend.close()


@pytest.mark.kafka
def test_too_few_labelled_rows_fail_with_the_count(window_topic, tmp_path, capsys,
                                                   restore_logging):
    code = main(["trainer", "--bootstrap-servers", window_topic.settings.bootstrap_servers,
                 "--features-topic", window_topic["features"], "--models-dir",
                 str(tmp_path / "models"), "--config-file", str(tmp_path / "models.config"),
                 "--min-rows", "100000", "--max-rows", "100000"])
    assert code == 1
    failed = the_line(log_lines(capsys.readouterr().err), "failed")
    assert "fewer than min_rows=100000" in failed["error"]
    assert not (tmp_path / "models").exists() and not (tmp_path / "models.config").exists()


@given(st.lists(st.integers(), max_size=300), st.integers(1, 50),
       st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_reservoir_keeps_a_sample_of_the_stream(items, capacity, batch_sizes):
    reservoir = Reservoir(capacity, seed=1)
    position, turn = 0, 0
    while position < len(items):
        size = batch_sizes[turn % len(batch_sizes)]
        reservoir.add(items[position : position + size])
        position, turn = position + size, turn + 1
    assert reservoir.seen == len(items)
    assert len(reservoir.items) == min(capacity, len(items))
    remaining = list(items)
    for item in reservoir.items:
        remaining.remove(item)  # each kept item is a distinct element of the stream


def test_reservoir_sample_is_uniform():
    kept = np.zeros(100)
    for seed in range(400):
        reservoir = Reservoir(10, seed)
        for start in range(0, 100, 7):
            reservoir.add(list(range(start, min(start + 7, 100))))
        kept[reservoir.items] += 1
    # Each of 100 items is kept with probability 1/10: 40 times in 400 draws, sd ~6.
    assert kept.min() > 15 and kept.max() < 70
    assert abs(kept[:50].sum() - kept[50:].sum()) < 300, "early and late items alike"


@given(st.lists(st.floats(0, 1e9), max_size=200), st.floats(0.01, 0.99))
def test_most_recent_is_the_latest_fraction(times, fraction):
    held_out = most_recent(np.array(times), fraction)
    if not times:
        assert not held_out.any()
        return
    assert held_out.sum() >= math.ceil(fraction * len(times))
    if held_out.any() and not held_out.all():
        assert min(np.array(times)[held_out]) > max(np.array(times)[~held_out])


def test_gate_names_each_failing_metric():
    rules = GateSettings(min_macro_f1=0.5, max_false_positive_rate=0.05,
                         max_macro_f1_drop=0.02, max_fpr_increase=0.005)
    stable = {MACRO_F1: 0.9, FALSE_POSITIVE_RATE: 0.01}
    assert gate_failures({MACRO_F1: 0.89, FALSE_POSITIVE_RATE: 0.014}, stable, rules) == []
    worse_f1 = gate_failures({MACRO_F1: 0.85, FALSE_POSITIVE_RATE: 0.01}, stable, rules)
    assert len(worse_f1) == 1 and worse_f1[0].startswith(f"{MACRO_F1} 0.8500 is worse")
    worse_fpr = gate_failures({MACRO_F1: 0.95, FALSE_POSITIVE_RATE: 0.02}, stable, rules)
    assert len(worse_fpr) == 1 and worse_fpr[0].startswith(FALSE_POSITIVE_RATE)
    first = gate_failures({MACRO_F1: 0.3, FALSE_POSITIVE_RATE: None}, None, rules)
    assert [reason.split(" ")[0] for reason in first] == [MACRO_F1, FALSE_POSITIVE_RATE]


@pytest.mark.kafka
def test_only_on_drift_trains_only_after_a_scorer_reported_drift(window_topic, tmp_path, capsys,
                                                                 restore_logging):
    drift_topic = f"{window_topic['features']}.drift"
    args = ["trainer", "--bootstrap-servers", window_topic.settings.bootstrap_servers,
            "--features-topic", window_topic["features"], "--drift-topic", drift_topic,
            "--models-dir", str(tmp_path / "models"), "--config-file",
            str(tmp_path / "models.config"), "--only-on-drift", "true",
            "--min-rows", "100000", "--max-rows", "100000"]
    ensure_topics(replace(window_topic.settings, drift_topic=drift_topic), [drift_topic])
    drift = {"ts": time.time(), "scorer": "s/1", "model_name": "headbits", "model_version": 1,
             "kind": "protocol", "key": "dns", "rows": 5000, "psi": 0.05,
             "low_tail_share": 0.01, "crossed": False}
    codec = ValueCodec("drift", drift_topic)
    producer = Producer(window_topic.settings)
    producer.produce(drift_topic, codec.encode(drift), "protocol/dns", codec.headers)
    producer.flush()
    assert main(args) == 0
    lines = log_lines(capsys.readouterr().err)
    the_line(lines, "no drift of the stable version in the window: nothing to retrain")

    producer.produce(drift_topic, codec.encode({**drift, "psi": 0.6, "crossed": True}),
                     "protocol/dns", codec.headers)
    producer.flush()
    assert main(args) == 1, "drift reported: it reads the window (and finds too few rows)"
    lines = log_lines(capsys.readouterr().err)
    assert the_line(lines, "drift reported: retraining")["slices"] == ["protocol/dns"]
    assert "fewer than min_rows" in the_line(lines, "failed")["error"]


@pytest.mark.kafka
def test_retrain_publishes_to_an_s3_bucket_and_compares_with_the_stable_its_config_names(
    window_topic, tmp_path, monkeypatch, capsys, restore_logging
):
    """As the chart runs it with models.storage: objectStore and a ConfigMap config: versions go
    to the bucket (moto's server, the stand-in for S3), the stable version compared with is the
    one TF Serving's config labels (fetched from the bucket), and the trainer moves no label."""
    from headbits.common.model_store.s3 import S3Store
    from headbits.devtools.s3_standin import S3Standin
    from tests.serving_models import write_config

    standin = S3Standin().start()
    try:
        standin.client().create_bucket(Bucket="detections")
        for name, value in standin.environment().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        base_path = "s3://detections/headbits/headbits"
        config = write_config(tmp_path / "tfserving" / "models.config", base_path, [], {})
        env = {
            **window_topic.env,
            "HEADBITS_MODEL_STORE": "s3://detections/headbits",
            "HEADBITS_MODELS_DIR": str(tmp_path / "no-volume"),
            "HEADBITS_CONFIG_FILE": str(config),
            "HEADBITS_LABEL_VERSIONS": "false",
            "HEADBITS_N": "16", "HEADBITS_MAX_EPOCHS": "5", "HEADBITS_MIN_CLASS_ROWS": "10",
            "HEADBITS_MIN_ROWS": "100", "HEADBITS_VALIDATION_FOLDS": "3",
            "HEADBITS_MAX_MACRO_F1_DROP": "1", "HEADBITS_MAX_FPR_INCREASE": "1",
            "HEADBITS_MAX_FALSE_POSITIVE_RATE": "1", "HEADBITS_MIN_MACRO_F1": "0",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        store = S3Store(base_path)

        assert main(["trainer"]) == 0
        published = the_line(log_lines(capsys.readouterr().err), "published")
        assert (published["version"], published["labels"]) == (1, [])
        assert published["location"] == f"{base_path}/1"
        assert store.version_names() == [1]
        assert store.read_metadata(1)["evaluation"]["stable"] is None
        assert not (tmp_path / "no-volume").exists(), "the trainer wrote to models_dir"

        config = write_config(config, base_path, [1], {"stable": 1})  # `helm upgrade`
        before = config.read_bytes()
        assert main(["trainer"]) == 0
        published = the_line(log_lines(capsys.readouterr().err), "published")
        assert (published["version"], published["labels"]) == (2, [])
        second = store.read_metadata(2)
        assert second["evaluation"]["stable"]["version"] == 1
        assert second["evaluation"]["stable"]["metrics"][MACRO_F1] == pytest.approx(
            store.read_metadata(1)["metrics"][MACRO_F1]), "stable was not scored as at its run"
        assert config.read_bytes() == before, "the trainer moved a label of the chart's config"
        assert not read_state(config).labels

        assert main(["trainer", "--promote-stable"]) == 1
        assert "label_versions is false" in the_line(
            log_lines(capsys.readouterr().err), "failed")["error"]
    finally:
        standin.stop()
