"""`headbits model`: listing versions, TF Serving's config file, promotion and rollback.

Promotions are checked against the development stand-in for TF Serving (its binary cannot be
installed here), which refuses, as TF Serving does, a label on a version that is not loaded: a
one-step promotion would fail there.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from headbits.cli import main
from headbits.common.model_repository import (
    RolloutState,
    model_server_config,
    read_state,
    state_path,
)
from headbits.devtools.tfserving_standin import StandinServer, standin_settings
from tests.serving_models import export_versions


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return export_versions(tmp_path_factory.mktemp("models"))


def read_config(path: Path):
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(path.read_text(), config)
    return config


def model(args: list[str], models_dir: Path, config: Path, *extra: str) -> int:
    return main(["model", *args, "--models-dir", str(models_dir), "--config-file", str(config),
                 *extra])


@pytest.fixture
def standin(tmp_path, models_dir):
    """A stand-in that only changes config when told by RPC, so every write is checked."""
    config = tmp_path / "models.config"
    assert model(["config"], models_dir, config) == 0
    server = StandinServer(standin_settings(config, model_config_file_poll_wait_seconds=0)).start()
    yield server
    server.stop(grace=None)


def test_config_writes_tf_serving_text_proto_and_batching_file(tmp_path, models_dir):
    config = tmp_path / "serving" / "models.config"
    assert model(["config"], models_dir, config, "--serving-base-path", "/models/headbits") == 0
    parsed = read_config(config).model_config_list.config
    assert len(parsed) == 1
    assert parsed[0].name == "headbits"
    assert parsed[0].base_path == "/models/headbits"
    assert parsed[0].model_platform == "tensorflow"
    assert list(parsed[0].model_version_policy.specific.versions) == []
    assert dict(parsed[0].version_labels) == {}
    batching = (config.parent / "batching.config").read_text()
    assert "max_batch_size { value: 8192 }" in batching
    assert "num_batch_threads" in batching
    assert sorted(p.name for p in config.parent.iterdir()) == ["batching.config", "models.config"]


def test_promote_loads_first_then_moves_the_label(standin, models_dir, capsys):
    config = standin.settings.model_config_file
    rpc = ["--server", standin.target, "--reload-via-rpc", "true"]

    assert model(["promote", "1"], models_dir, config, *rpc) == 0
    assert model(["promote", "2", "--label", "canary"], models_dir, config, *rpc) == 0
    written = read_config(config).model_config_list.config[0]
    assert dict(written.version_labels) == {"stable": 1, "canary": 2}
    assert sorted(written.model_version_policy.specific.versions) == [1, 2]

    # The negative control: the same move in one write is what TF Serving refuses.
    one_step = model_server_config("headbits", str(models_dir / "headbits"), [1, 3],
                                   {"stable": 3, "canary": 2})
    with grpc.insecure_channel(standin.target) as channel, pytest.raises(grpc.RpcError) as error:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=one_step), timeout=30)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    capsys.readouterr()
    assert model(["promote"], models_dir, config, *rpc) == 0  # canary -> stable
    out = capsys.readouterr().out
    assert "stable 1 -> 2" in out
    assert "step 1/2" not in out  # version 2 was already loaded: one write is enough

    assert model(["promote", "3"], models_dir, config, *rpc) == 0
    out = capsys.readouterr().out
    assert out.index("step 1/2: loading version 3") < out.index("step 2/2: stable 2 -> 3")
    written = read_config(config).model_config_list.config[0]
    assert dict(written.version_labels) == {"stable": 3, "canary": 2}
    # stable's previous version stays loaded, so a rollback is instant.
    assert sorted(written.model_version_policy.specific.versions) == [2, 3]

    assert model(["status"], models_dir, config, "--server", standin.target) == 0
    out = capsys.readouterr().out
    server_report = json.loads(out[out.index('{\n  "server"'):])["server"]
    assert server_report["labels"] == {"stable": 3, "canary": 2}
    assert server_report["versions"] == {"1": "END", "2": "AVAILABLE", "3": "AVAILABLE"}


def test_rollback_walks_back_the_label_history(standin, models_dir, capsys):
    config = standin.settings.model_config_file
    rpc = ["--server", standin.target, "--reload-via-rpc", "true"]
    for version in ("1", "2", "3"):
        assert model(["promote", version], models_dir, config, *rpc) == 0

    assert model(["rollback"], models_dir, config, *rpc) == 0
    assert read_state(config).labels == {"stable": 2}
    assert model(["rollback"], models_dir, config, *rpc) == 0
    state = read_state(config)
    assert state.labels == {"stable": 1}
    assert [(h["action"], h["from"], h["to"]) for h in state.history] == [
        ("promote", None, 1), ("promote", 1, 2), ("promote", 2, 3),
        ("rollback", 3, 2), ("rollback", 2, 1),
    ]
    assert dict(read_config(config).model_config_list.config[0].version_labels) == {"stable": 1}

    capsys.readouterr()
    assert model(["rollback"], models_dir, config, *rpc) == 1
    assert "stable has no earlier version to roll back to" in capsys.readouterr().err


def test_list_shows_versions_labels_and_metrics(tmp_path, models_dir, capsys):
    config = tmp_path / "models.config"
    state_path(config).write_text(json.dumps(
        RolloutState(labels={"stable": 2, "canary": 3}).to_dict()))
    assert model(["list"], models_dir, config) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["version", "labels", "loaded", "N", "classes", "created",
                                "metrics"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"1", "2", "3"}
    assert rows["1"][1:5] == ["-", "no", "8", "2"]
    assert rows["2"][1:3] == ["stable", "yes"]
    assert rows["3"][1:4] == ["canary", "yes", "16"]
    assert "auroc=0.8" in rows["3"]


def test_refusals_name_the_problem(tmp_path, models_dir, capsys):
    config = tmp_path / "models.config"
    no_wait = ["--settle-seconds", "0"]
    assert model(["promote", "9"], models_dir, config, *no_wait) == 1
    assert "no SavedModel at" in capsys.readouterr().err
    assert model(["promote", "1", "--label", "not-a-label"], models_dir, config, *no_wait) == 1
    assert "must match [a-zA-Z0-9_]+" in capsys.readouterr().err
    assert model(["promote"], models_dir, config, *no_wait) == 1
    assert "promote needs a VERSION" in capsys.readouterr().err
    assert not config.exists()  # nothing was written by a refused command

    # Without a server the two writes are separated by settle_seconds.
    assert model(["promote", "1"], models_dir, config, *no_wait) == 0
    assert dict(read_config(config).model_config_list.config[0].version_labels) == {"stable": 1}

    state_path(config).write_text("{not json")
    assert model(["list"], models_dir, config) == 1
    assert "unreadable rollout state" in capsys.readouterr().err


def test_promote_and_status_over_mutual_tls(tmp_path, models_dir, capsys):
    """`headbits model` reaches a TF Serving that requires TLS and client certificates with the
    scorer's settings (`--serving-tls`, CA, client certificate and key); without its client
    certificate the same promotion is refused and the labels stay where they were."""
    from headbits.devtools.certificates import make_pki

    pki = make_pki(tmp_path / "pki", clients=("model",))
    config = tmp_path / "models.config"
    assert model(["config"], models_dir, config) == 0
    server = StandinServer(standin_settings(
        config, model_config_file_poll_wait_seconds=0,
        ssl_server_cert_file=pki.server.cert_file, ssl_server_key_file=pki.server.key_file,
        ssl_custom_ca_file=pki.ca_file, ssl_client_verify=True)).start()
    client = pki.clients["model"]
    rpc = ["--server", server.target, "--reload-via-rpc", "true", "--wait-seconds", "5"]
    tls = ["--serving-tls", "true", "--serving-ca-file", str(pki.ca_file)]
    mutual = [*tls, "--serving-cert-file", str(client.cert_file),
              "--serving-key-file", str(client.key_file)]
    try:
        capsys.readouterr()
        assert model(["promote", "1"], models_dir, config, *rpc, *tls) == 1
        assert "refused the config: UNAVAILABLE" in capsys.readouterr().err
        assert read_state(config).labels == {}

        assert model(["promote", "1"], models_dir, config, *rpc, *mutual) == 0
        assert model(["promote", "2", "--label", "canary"], models_dir, config, *rpc,
                      *mutual) == 0
        capsys.readouterr()
        assert model(["status"], models_dir, config, "--server", server.target, *mutual) == 0
        out = capsys.readouterr().out
        report = json.loads(out[out.index('{\n  "server"'):])["server"]
        assert report["labels"] == {"stable": 1, "canary": 2}

        plaintext = ["--server", server.target]
        assert model(["status"], models_dir, config, *plaintext) == 0
        out = capsys.readouterr().out
        assert "UNAVAILABLE" in json.loads(out[out.index('{\n  "server"'):])["server"]["error"]
    finally:
        server.stop(grace=None)


def test_tls_files_without_the_switch_are_refused(tmp_path, models_dir, capsys):
    config = tmp_path / "models.config"
    assert model(["status"], models_dir, config, "--server", "127.0.0.1:1",
                 "--serving-ca-file", str(tmp_path / "ca.pem")) == 2
    assert "need --serving-tls true" in capsys.readouterr().err
    assert not config.exists()
