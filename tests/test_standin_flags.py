"""The TF Serving stand-in started the way the real server is: `tensorflow_model_server`'s own
flag names, its REST status and metadata endpoints, its Prometheus path, and its refusals at
start-up (model_servers/server.cc and server_core.cc), over real gRPC and HTTP on loopback.

The Helm chart's tests start the stand-in with the very arguments the chart renders for the real
server (tests/test_helm.py); this file checks that the stand-in means by them what TF Serving does.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from headbits.devtools.tfserving_standin import ServingError, StandinServer, standin_settings
from headbits.scorer.tfserving import TFServingBackend
from tests.serving_models import export_versions, write_config

GOOD_BATCHING = """max_batch_size { value: 8192 }
batch_timeout_micros { value: 1000 }
max_enqueued_batches { value: 16 }
num_batch_threads { value: 2 }
allowed_batch_sizes: 512
allowed_batch_sizes: 8192
pad_variable_length_inputs: true
"""
MONITORING = 'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return export_versions(tmp_path_factory.mktemp("models"), versions=(1,))


def test_started_with_tf_serving_flags_it_serves_grpc_rest_and_metrics(tmp_path, models_dir):
    config = write_config(tmp_path / "models.config", models_dir / "headbits", [1], {"stable": 1})
    (tmp_path / "batching.config").write_text(GOOD_BATCHING)
    (tmp_path / "monitoring.config").write_text(MONITORING)
    port, rest = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "headbits.cli", "serving-standin",
         f"--port={port}", f"--rest_api_port={rest}", f"--model_config_file={config}",
         "--model_config_file_poll_wait_seconds=30", "--file_system_poll_wait_seconds=5",
         "--allow_version_labels_for_unavailable_models=true", "--enable_batching",
         f"--batching_parameters_file={tmp_path / 'batching.config'}",
         f"--monitoring_config_file={tmp_path / 'monitoring.config'}",
         "--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=1",
         "--rest_api_num_threads=2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        banner = process.stdout.readline()
        assert f"REST on 127.0.0.1:{rest}" in banner, banner
        base = f"http://127.0.0.1:{rest}"

        status, body = get(f"{base}/v1/models/headbits/labels/stable/metadata")
        assert status == 200, body
        metadata = json.loads(body)
        assert metadata["model_spec"]["version"] == "1"
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert set(signature["inputs"]) == {"head_bytes", "head_lengths"}

        status, body = get(f"{base}/v1/models/headbits/labels/canary/metadata")
        assert status == 400 and "Unrecognized servable version label: canary" in body
        status, body = get(f"{base}/v1/models/headbits")
        assert status == 200
        assert json.loads(body)["model_version_status"][0]["state"] == "AVAILABLE"
        status, body = get(f"{base}/v1/models/headbits/versions/9")
        assert status == 404 and "Could not find version 9" in body

        backend = TFServingBackend(f"127.0.0.1:{port}")
        assert backend.info().version == 1
        backend.close()
        status, body = get(f"{base}/monitoring/prometheus/metrics")
        assert status == 200
        assert ':tensorflow:serving:request_count{model_name="headbits",status="OK"}' in body
    finally:
        process.terminate()
        process.wait(timeout=30)


def refused(tmp_path: Path, labels: dict[str, int], **flags) -> str:
    """Start an in-process stand-in that must refuse; return the refusal's message."""
    config = write_config(tmp_path / "models.config", tmp_path / "headbits", [1], labels)
    settings = replace(standin_settings(config), **flags)
    with pytest.raises(ServingError) as caught:
        StandinServer(settings)
    return caught.value.message


def test_refuses_labels_on_versions_not_loaded_without_the_flag(tmp_path):
    message = refused(tmp_path, {"stable": 1})
    assert "Request to assign label to version 1 of model headbits" in message
    # With the flag, the same config starts (the label waits for its version).
    config = tmp_path / "models.config"
    server = StandinServer(standin_settings(
        config, allow_version_labels_for_unavailable_models=True)).start()
    server.stop()


@pytest.mark.parametrize(("batching", "expected"), [
    # The wrapper-typed fields take `{ value: N }`; the plain bool does not.
    ("pad_variable_length_inputs { value: true }\n", "Invalid protobuf file"),
    ("max_batch_size: 8192\n", "Invalid protobuf file"),
    ("max_batch_size { value: 4096 }\nallowed_batch_sizes: 512\nallowed_batch_sizes: 2048\n",
     "the final entry must equal max_batch_size"),
])
def test_refuses_a_batching_file_tf_serving_cannot_use(tmp_path, batching, expected):
    path = tmp_path / "batching.config"
    path.write_text(batching)
    message = refused(tmp_path, {}, enable_batching=True, batching_parameters_file=str(path))
    assert expected in message


def test_refuses_a_batching_file_without_enable_batching(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text(GOOD_BATCHING)
    message = refused(tmp_path, {}, batching_parameters_file=str(path))
    assert "batching_parameters_file is set without setting" in message


def test_refuses_an_unparsable_monitoring_file_and_all_three_thread_flags(tmp_path):
    path = tmp_path / "monitoring.config"
    path.write_text("prometheus_config { enable: yes please }\n")
    message = refused(tmp_path, {}, rest_api_port=free_port(), monitoring_config_file=str(path))
    assert f"Invalid protobuf file: '{path}'" in message
    message = refused(tmp_path, {}, tensorflow_intra_op_parallelism=1,
                      tensorflow_inter_op_parallelism=1, tensorflow_session_parallelism=1)
    assert "You cannot configure all" in message


def test_the_verb_reports_a_refusal_and_an_unknown_flag_like_the_server(tmp_path):
    config = write_config(tmp_path / "models.config", tmp_path / "headbits", [1], {})
    path = tmp_path / "batching.config"
    path.write_text("pad_variable_length_inputs { value: true }\n")
    result = subprocess.run(
        [sys.executable, "-m", "headbits.cli", "serving-standin", f"--model_config_file={config}",
         "--port=0", "--enable_batching=true", f"--batching_parameters_file={path}"],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{path}'" \
        in result.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "headbits.cli", "serving-standin", f"--model_config_file={config}",
         "--no_such_flag=1"],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert unknown.returncode == 2 and "--no_such_flag" in unknown.stderr
