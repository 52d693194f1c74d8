"""The TF Serving backend against the development stand-in, over real gRPC on loopback.

The stand-in replaces TF Serving's binary, which cannot be installed here; the models are real
versions trained and exported by the project's trainer (tests/serving_models.py).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from headbits.common.columnar import records_table
from headbits.common.model_repository import config_text, model_server_config, write_atomically
from headbits.devtools.tfserving_standin import StandinServer, standin_settings
from headbits.scorer.backend import BackendUnavailable, disagreement
from headbits.scorer.inprocess import SavedModelBackend
from headbits.scorer.tfserving import TFServingBackend, TLSFiles, tensor_array, tensor_proto
from headbits.trainer.rollout import ModelSettings, Repository
from tests.serving_models import CLASSES, export_versions, labelled_heads, write_config

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return export_versions(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def in_process(models_dir):
    backends = {v: SavedModelBackend(models_dir / "headbits" / str(v)) for v in (1, 2, 3)}
    yield backends
    for backend in backends.values():
        backend.close()


@pytest.fixture(scope="module")
def heads():
    batch, _ = labelled_heads(300, seed=7)
    return batch


@pytest.fixture
def serve(tmp_path, models_dir):
    """Start stand-ins on free loopback ports; each test gets its own config file."""
    servers = []

    def start(versions=(1, 2), labels=None, base=None, **overrides) -> StandinServer:
        labels = {"stable": 1, "canary": 2} if labels is None else labels
        config = write_config(tmp_path / "models.config", base or models_dir / "headbits",
                              list(versions), labels)
        overrides.setdefault("allow_version_labels_for_unavailable_models", True)
        overrides.setdefault("file_system_poll_wait_seconds", 0.1)
        overrides.setdefault("model_config_file_poll_wait_seconds", 0.1)
        server = StandinServer(standin_settings(config, **overrides)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=None)


def wait_for(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except BackendUnavailable:
            result = None
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


def stubs(target: str):
    channel = grpc.insecure_channel(target)
    return (prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


def predict_request(batch, label="stable", name="headbits") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.version_label = label
    request.inputs["head_bytes"].CopyFrom(tensor_proto(batch.head_bytes))
    request.inputs["head_lengths"].CopyFrom(tensor_proto(batch.head_lengths))
    return request


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value


def assert_same_scores(remote, local):
    for name in ("reconstruction_error", "direction_error", "protocol_probs", "threshold"):
        np.testing.assert_array_equal(getattr(remote, name), getattr(local, name), err_msg=name)


def test_tensor_protos_round_trip_from_content_and_from_value_fields():
    values = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    np.testing.assert_array_equal(tensor_array(tensor_proto(values)), values)
    as_fields = tensor_proto(values)
    as_fields.ClearField("tensor_content")
    as_fields.float_val.extend(values.ravel().tolist())
    np.testing.assert_array_equal(tensor_array(as_fields), values)
    packed = tensor_proto(np.full((5, 16), 255, np.uint8))
    assert len(packed.tensor_content) == 5 * 16  # one byte per head byte on the wire
    with pytest.raises(ValueError, match="no TensorProto dtype"):
        tensor_proto(np.zeros(2, np.complex64))


def test_scores_through_grpc_equal_in_process_scores(serve, in_process, heads):
    server = serve()
    stable = TFServingBackend(server.target)
    canary = stable.for_label("canary")
    try:
        assert stable.info() == in_process[1].info()
        assert canary.info() == in_process[2].info()
        assert stable.info().classes == CLASSES
        assert_same_scores(stable.score(heads), in_process[1].score(heads))
        assert_same_scores(canary.score(heads), in_process[2].score(heads))
    finally:
        canary.close()
        stable.close()


def test_shadow_disagreement_counts_rows_where_versions_differ(serve, in_process, heads):
    server = serve()
    stable = TFServingBackend(server.target)
    canary = stable.for_label("canary")
    try:
        primary, shadow = stable.score(heads), canary.score(heads)
    finally:
        canary.close()
        stable.close()
    local_1, local_2 = in_process[1].score(heads), in_process[2].score(heads)
    found = disagreement(primary, shadow)
    assert found.rows == len(heads)
    assert found.anomaly_verdicts == int(np.sum(local_1.is_anomalous() != local_2.is_anomalous()))
    top_1, top_2 = local_1.protocol_probs.argmax(1), local_2.protocol_probs.argmax(1)
    assert found.predicted_protocols == int(np.sum(top_1 != top_2))
    assert found.mean_abs_error_delta == pytest.approx(
        float(np.abs(local_1.reconstruction_error - local_2.reconstruction_error).mean()))
    assert found.mean_abs_error_delta > 0  # two trainings, two sets of weights
    assert disagreement(primary, primary).anomaly_verdicts == 0


def feature_records_of(batch) -> list[dict]:
    """Features-topic records (schemas/features.avsc) carrying the batch's heads."""
    return [
        {"uid": f"U{row:04d}", "ts": 1.7e9 + row, "sensor": "s", "orig_h": "10.0.0.1",
         "orig_p": 40000 + row, "resp_h": "10.0.0.2", "resp_p": 443, "transport": "tcp",
         "expected_protocol": "tls", "expected_source": "port", "n": batch.n,
         "head_bytes": batch.head_bytes[row].tobytes(),
         "orig_length": int(batch.head_lengths[row, 0]),
         "resp_length": int(batch.head_lengths[row, 1]), "orig_gap": False, "resp_gap": False}
        for row in range(len(batch))
    ]


def shadow_scored(target: str, heads) -> tuple[list[dict], object]:
    """The scores-topic records of a scorer on `stable` shadowed by `canary`, and its metrics."""
    from prometheus_client import CollectorRegistry

    from headbits.scorer.service import ScorerStage, ShadowMetrics

    stable = TFServingBackend(target)
    canary = stable.for_label("canary")
    stage = ScorerStage(stable, "alerts", "scores", shadow=canary)
    registry = CollectorRegistry()
    stage.shadow_metrics = ShadowMetrics(registry)
    try:
        transformed = stage.transform(records_table("features", feature_records_of(heads)))
    finally:
        canary.close()
        stable.close()
    (scores_output,) = [o for o in transformed.outputs if o.topic == "scores"]
    return scores_output.table.to_pylist(), registry


def test_scorer_shadow_scores_canary_next_to_stable(serve, in_process, heads):
    records, registry = shadow_scored(serve().target, heads)
    by_version: dict[int, dict[str, float]] = {}
    for record in records:
        by_version.setdefault(record["model_version"], {})[record["uid"]] = record["score"]
    assert sorted(by_version) == [1, 2]
    uids = [f"U{row:04d}" for row in range(len(heads))]
    for version in (1, 2):
        local = in_process[version].score(heads).reconstruction_error
        np.testing.assert_allclose([by_version[version][uid] for uid in uids], local, rtol=1e-6)
    expected = disagreement(in_process[1].score(heads), in_process[2].score(heads))
    assert registry.get_sample_value("headbits_shadow_scored_records_total") == len(heads)
    assert registry.get_sample_value(
        "headbits_shadow_disagreements_total", {"kind": "anomaly"}) == expected.anomaly_verdicts
    assert registry.get_sample_value(
        "headbits_shadow_disagreements_total", {"kind": "protocol"}) == expected.predicted_protocols


def test_a_missing_shadow_label_costs_only_the_shadow_scores(serve, heads):
    records, registry = shadow_scored(serve(labels={"stable": 1}).target, heads)
    assert {r["model_version"] for r in records} == {1}
    assert len(records) == len(heads)
    assert registry.get_sample_value("headbits_shadow_failures_total") == 1


def test_promote_and_rollback_reach_a_running_scorer(tmp_path, models_dir, in_process, heads):
    # From nothing, as a deployment starts: an empty config, then promotions by the command.
    settings = ModelSettings(models_dir=models_dir, config_file=tmp_path / "rollout.config")
    Repository(settings).write_config([], {})
    server = StandinServer(standin_settings(
        settings.config_file, file_system_poll_wait_seconds=0.1,
        model_config_file_poll_wait_seconds=0.1)).start()
    repository = Repository(replace(settings, server=server.target), out=io.StringIO())
    scorer = TFServingBackend(server.target, retries=0)
    try:
        with pytest.raises(BackendUnavailable):
            scorer.score(heads)
        repository.promote(1, "stable")
        scores = wait_for(lambda: scorer.score(heads))
        assert scores.model.version == 1

        repository.promote(2, "stable")
        scores = wait_for(lambda: (s := scorer.score(heads)).model.version == 2 and s)
        assert_same_scores(scores, in_process[2].score(heads))

        repository.promote(3, "stable")  # a version of another N: the scorer learns it alone
        scores = wait_for(lambda: (s := scorer.score(heads)).model.version == 3 and s)
        assert scores.model.n == 16
        assert_same_scores(scores, in_process[3].score(heads))

        repository.rollback("stable")
        scores = wait_for(lambda: (s := scorer.score(heads)).model.version == 2 and s)
        assert_same_scores(scores, in_process[2].score(heads))
    finally:
        scorer.close()
        server.stop(grace=None)


def test_error_codes_follow_tf_serving(serve, heads):
    server = serve(versions=(1, 2), labels={"stable": 1})
    predictions, models = stubs(server.target)
    batch = heads.truncate(8)

    unknown_model = predict_request(batch, name="nope")
    unknown_model.model_spec.ClearField("version_label")
    error = rpc_error(predictions.Predict, unknown_model)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "Servable not found for request: Latest(nope)" in error.details()
    # As in TF Serving, a label is looked up before the model: an unknown model's label is an
    # unknown label.
    error = rpc_error(predictions.Predict, predict_request(batch, name="nope"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    unknown_version = predict_request(batch)
    unknown_version.model_spec.version.value = 9
    error = rpc_error(predictions.Predict, unknown_version)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "Specific(headbits, 9)" in error.details()

    unknown_label = rpc_error(predictions.Predict, predict_request(batch, label="canary"))
    assert unknown_label.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Unrecognized servable version label: canary" in unknown_label.details()

    wrong_dtype = predict_request(batch)
    wrong_dtype.inputs["head_bytes"].CopyFrom(tensor_proto(batch.head_bytes.astype(np.float32)))
    assert rpc_error(predictions.Predict, wrong_dtype).code() == grpc.StatusCode.INVALID_ARGUMENT

    wrong_shape = predict_request(heads.truncate(16))
    error = rpc_error(predictions.Predict, wrong_shape)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "head_bytes" in error.details()

    missing_input = predict_request(batch)
    del missing_input.inputs["head_lengths"]
    error = rpc_error(predictions.Predict, missing_input)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Missing but required: {head_lengths}" in error.details()

    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["weights"])
    metadata.model_spec.name = "headbits"
    assert rpc_error(predictions.GetModelMetadata, metadata).code() == (
        grpc.StatusCode.INVALID_ARGUMENT)

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "nope"
    error = rpc_error(models.GetModelStatus, status)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "Could not find any versions of model nope" in error.details()


def test_labels_only_name_loaded_versions(serve, heads, models_dir):
    # With TF Serving's flag on, as docs/serving.md runs it: only *new* labels may name versions
    # that are not loaded yet; moving an existing label still needs the version loaded.
    server = serve(versions=(1, 2), labels={"stable": 1}, model_config_file_poll_wait_seconds=0)
    predictions, models = stubs(server.target)
    base = str(models_dir / "headbits")

    # Moving a label to a version that is not loaded is refused, and nothing changes.
    refused = model_management_pb2.ReloadConfigRequest(
        config=model_server_config("headbits", base, [1, 2, 3], {"stable": 3}))
    error = rpc_error(models.HandleReloadConfigRequest, refused)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Request to assign label to version 3 of model headbits" in error.details()
    answer = predictions.Predict(predict_request(heads.truncate(8)), timeout=10)
    assert answer.model_spec.version.value == 1

    # A label on a version that the same config unloads: accepted (it was loaded when checked),
    # then requests by that label find no servable, and the scorer backs off.
    unloading = model_management_pb2.ReloadConfigRequest(
        config=model_server_config("headbits", base, [2], {"stable": 1}))
    response = models.HandleReloadConfigRequest(unloading, timeout=30)
    assert response.status.error_code == 0
    error = rpc_error(predictions.Predict, predict_request(heads.truncate(8)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    scorer = TFServingBackend(server.target, retries=0)
    with pytest.raises(BackendUnavailable, match="NOT_FOUND"):
        scorer.info()
    scorer.close()

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "headbits"
    states = {s.version: s.state for s in models.GetModelStatus(status, timeout=10)
              .model_version_status}
    assert states == {1: END, 2: AVAILABLE}


def test_backend_errors_map_to_unavailable_or_value_error(serve, heads, tmp_path):
    server = serve()
    scorer = TFServingBackend(server.target, deadline_seconds=1e-6, retries=1,
                              backoff_seconds=0.01)
    with pytest.raises(BackendUnavailable, match="DEADLINE_EXCEEDED"):
        scorer.info()
    scorer.close()

    scorer = TFServingBackend(server.target)
    with pytest.raises(ValueError, match="cannot feed a model of N=8"):
        scorer.score(heads.truncate(4))
    scorer.close()

    empty = serve(versions=(), labels={}, base=tmp_path / "empty")
    waiting = TFServingBackend(empty.target, retries=0)
    with pytest.raises(BackendUnavailable, match="NOT_FOUND"):
        waiting.info()
    waiting.close()


def test_scorer_backs_off_while_the_server_is_down_and_resumes(serve, heads, in_process):
    server = serve()
    port = server.port
    scorer = TFServingBackend(server.target, deadline_seconds=2, retries=2, backoff_seconds=0.05)
    assert scorer.score(heads).model.version == 1
    server.stop(grace=None)
    with pytest.raises(BackendUnavailable, match="UNAVAILABLE"):
        scorer.score(heads)
    serve(port=port)
    scores = wait_for(lambda: scorer.score(heads), timeout=30)
    assert_same_scores(scores, in_process[1].score(heads))
    scorer.close()


def test_new_versions_on_disk_are_picked_up(tmp_path, models_dir, heads):
    base = tmp_path / "repo" / "headbits"
    base.mkdir(parents=True)
    shutil.copytree(models_dir / "headbits" / "1", base / "1")
    config = model_server_config("headbits", str(base), [], {})
    config.model_config_list.config[0].model_version_policy.latest.num_versions = 1
    write_atomically(tmp_path / "latest.config", config_text(config))
    server = StandinServer(standin_settings(tmp_path / "latest.config",
                                            file_system_poll_wait_seconds=0.1)).start()
    predictions, models = stubs(server.target)
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "headbits"

    def states():
        response = models.GetModelStatus(status, timeout=10)
        return {s.version: s.state for s in response.model_version_status}

    try:
        assert states() == {1: AVAILABLE}
        # A new version appears atomically, as the exporter writes it.
        shutil.copytree(models_dir / "headbits" / "2", base / ".2.partial")
        os.rename(base / ".2.partial", base / "2")
        wait_for(lambda: states() == {1: END, 2: AVAILABLE})
        latest = predict_request(heads.truncate(8))
        latest.model_spec.ClearField("version_label")
        assert predictions.Predict(latest, timeout=10).model_spec.version.value == 2
    finally:
        server.stop(grace=None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serving_standin_verb_starts_serves_and_stops_on_sigterm(tmp_path, models_dir):
    config = write_config(tmp_path / "models.config", models_dir / "headbits", [1], {"stable": 1})
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "headbits.cli", "serving-standin", "--model-config-file",
         str(config), "--port", str(port), "--allow-version-labels-for-unavailable-models",
         "true"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert "development stand-in for TF Serving" in process.stdout.readline()
        scorer = TFServingBackend(f"127.0.0.1:{port}")
        assert scorer.info().version == 1
        scorer.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()

    # TF Serving's rule at start-up: labels need loaded versions unless the flag says otherwise.
    refused = subprocess.run(
        [sys.executable, "-m", "headbits.cli", "serving-standin", "--model-config-file",
         str(config), "--port", "0"],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert refused.returncode == 1
    assert "Request to assign label to version 1" in refused.stdout


def test_a_batch_above_max_batch_size_is_scored_in_parts(serve, in_process, heads):
    """TF Serving refuses a batch above its max_batch_size (INVALID_ARGUMENT, a ValueError from
    the backend). The scorer once let that ValueError escape, exited without storing offsets and
    crash-looped on the same batch; it now bisects and scores every row."""
    from headbits.scorer.service import ScorerStage

    server = serve(max_batch_size=64)
    backend = TFServingBackend(server.target)
    with pytest.raises(ValueError, match="Task size 300 is larger than maximum batch size 64"):
        backend.score(heads)
    transformed = ScorerStage(backend, "alerts", "scores").transform(
        records_table("features", feature_records_of(heads)))
    backend.close()
    assert transformed.rejected == []
    (scores,) = [o for o in transformed.outputs if o.topic == "scores"]
    assert scores.table.column("uid").to_pylist() == [f"U{row:04d}" for row in range(len(heads))]
    local = in_process[1].score(heads).reconstruction_error
    np.testing.assert_allclose([s["score"] for s in scores.table.to_pylist()], local, rtol=1e-6)


class PoisonRefusingBackend(TFServingBackend):
    """The real gRPC backend, refusing (ValueError, as the contract allows) any batch holding a
    head whose first byte is 0xEE: injected refusals of single rows."""

    def score(self, batch):
        if (batch.head_bytes[:, 0] == 0xEE).any():
            raise ValueError("poison head")
        return super().score(batch)


def test_only_rows_refused_alone_are_dead_lettered_with_the_reason(serve, in_process, heads):
    from headbits.scorer.service import ScorerStage

    records = feature_records_of(heads)
    poison = (17, 200, 201)
    for row in poison:
        records[row]["head_bytes"] = b"\xee" + records[row]["head_bytes"][1:]
    backend = PoisonRefusingBackend(serve().target)
    transformed = ScorerStage(backend, "alerts", "scores").transform(
        records_table("features", records))
    backend.close()
    assert transformed.rejected == [
        (row, "the model refused this record: poison head") for row in poison]
    (scores,) = [o for o in transformed.outputs if o.topic == "scores"]
    kept = [row for row in range(len(heads)) if row not in poison]
    assert [s["uid"] for s in scores.table.to_pylist()] == [f"U{row:04d}" for row in kept]
    local = in_process[1].score(heads).reconstruction_error[kept]
    np.testing.assert_allclose([s["score"] for s in scores.table.to_pylist()], local, rtol=1e-6)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from headbits.devtools.certificates import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"), clients=("scorer",))


def test_tls_to_serving_through_the_scorer_settings(serve, in_process, heads, pki):
    from headbits.scorer.service import ScorerSettings, make_backend

    server = serve(ssl_server_cert_file=pki.server.cert_file,
                   ssl_server_key_file=pki.server.key_file)
    backend = make_backend(ScorerSettings(
        backend="tfserving", serving_target=server.target, serving_tls=True,
        serving_ca_file=pki.ca_file))
    assert_same_scores(backend.score(heads), in_process[1].score(heads))
    backend.close()
    plaintext = TFServingBackend(server.target, retries=0, deadline_seconds=2)
    with pytest.raises(BackendUnavailable, match="UNAVAILABLE"):
        plaintext.info()
    plaintext.close()


def test_mutual_tls_refuses_a_scorer_without_a_client_certificate(serve, in_process, heads, pki):
    from headbits.scorer.service import ScorerSettings, make_backend

    server = serve(ssl_server_cert_file=pki.server.cert_file,
                   ssl_server_key_file=pki.server.key_file, ssl_custom_ca_file=pki.ca_file,
                   ssl_client_verify=True)
    settings = ScorerSettings(backend="tfserving", serving_target=server.target,
                              serving_tls=True, serving_ca_file=pki.ca_file)
    anonymous = TFServingBackend(server.target, retries=0, deadline_seconds=2,
                                 tls=TLSFiles(ca_file=pki.ca_file))
    with pytest.raises(BackendUnavailable, match="UNAVAILABLE"):
        anonymous.info()
    anonymous.close()
    client = pki.clients["scorer"]
    backend = make_backend(replace(settings, serving_cert_file=client.cert_file,
                                   serving_key_file=client.key_file))
    assert_same_scores(backend.score(heads), in_process[1].score(heads))
    backend.close()
