"""The OCI images, built by `make image` (scripts/build-images.sh) and run here.

Each image runs as UID 10001 with `headbits` as its entrypoint program; the collector and
featurizer images carry no TensorFlow; no image carries the development tools or the traffic
generator; every verb an image's chart containers run starts there. Then the featurizer image
turns heads from the test Kafka into features and the scorer image scores them, both as the
images' own processes (buildah's chroot isolation with the host's network: `podman run` cannot
set rlimits on our machines).

Marked `image` (deselect with `-m "not image"`): building the TensorFlow images takes minutes the
first time. Without buildah the tests skip, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from headbits import __version__
from headbits.common.kafka.follower import ensure_compacted_topics
from headbits.devtools.harness import Topics, read_topic
from tests.serving_models import export_versions
from tests.source_helpers import make_heads, produce_heads

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("collector", "featurizer", "scorer", "trainer")
# The verbs each image runs (the chart's containers and the rollout Job).
VERBS = {"collector": ["collector"], "featurizer": ["featurizer"], "scorer": ["scorer"],
         "trainer": ["trainer", "model"]}
STORAGE = ("--storage-driver", os.environ.get("BUILDAH_STORAGE_DRIVER", "vfs"))

pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]


def buildah(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *STORAGE, *args], check=False, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def images() -> dict[str, dict]:
    """Build every target with the project's script; target -> its JSON line."""
    if shutil.which("buildah") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("buildah is not installed: .ci/run installs it")
        pytest.skip("buildah is not installed (apt-get install buildah mmdebstrap)")
    built = subprocess.run([str(ROOT / "scripts" / "build-images.sh")], check=False,
                           capture_output=True, text=True, timeout=3300, cwd=ROOT)
    assert built.returncode == 0, built.stderr[-4000:]
    lines = [json.loads(line) for line in built.stdout.splitlines()]
    assert [line["target"] for line in lines] == list(TARGETS)
    return {line["target"]: line for line in lines}


def run_args(name: str, env: dict[str, str] | None = None,
             volumes: tuple[str, ...] = ()) -> list[str]:
    flags = [f"--env={key}={value}" for key, value in (env or {}).items()]
    flags += [f"--volume={volume}" for volume in volumes]
    return ["buildah", *STORAGE, "run", "--isolation", "chroot", "--network", "host", *flags,
            name, "--"]


@pytest.fixture(scope="module")
def containers(images: dict[str, dict]) -> Iterator[dict[str, str]]:
    """One working container per image, shared by the tests (vfs copies a whole image for each
    container, which takes a minute for the TensorFlow images)."""
    names: dict[str, str] = {}
    try:
        for target, line in images.items():
            made = buildah("from", "--pull=never", line["image"])
            assert made.returncode == 0, made.stderr
            names[target] = made.stdout.strip().splitlines()[-1]
        yield names
    finally:
        for name in names.values():
            buildah("rm", name)


def run_in(name: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([*run_args(name), *command], check=False, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("target", TARGETS)
def test_image_runs_headbits_as_uid_10001(images: dict[str, dict], containers: dict[str, str],
                                          target: str) -> None:
    image = images[target]["image"]
    result = run_in(containers[target], "sh", "-c", "id -u; id -g; headbits --version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["10001", "10001", "headbits", __version__]
    config = json.loads(buildah("inspect", "--type", "image", image).stdout)["OCIv1"]["config"]
    assert config["Entrypoint"] == ["headbits"]
    assert config["User"] == "10001:10001"
    assert images[target]["size_bytes"] > 0


PROBE = """
import importlib.util as u
print(*[u.find_spec(m) is not None for m in
        ("headbits.devtools", "headbits.traffic", "tensorflow", "confluent_kafka")])
"""


@pytest.mark.parametrize("target", TARGETS)
def test_image_carries_only_what_its_service_runs(containers: dict[str, str],
                                                   target: str) -> None:
    result = run_in(containers[target], "python", "-c", PROBE)
    assert result.returncode == 0, result.stderr
    devtools, traffic, tensorflow, kafka = (word == "True" for word in result.stdout.split())
    assert not devtools and not traffic, "development tools and the traffic generator stay out"
    assert kafka
    assert tensorflow is (target in ("scorer", "trainer")), "TensorFlow only where it scores"


@pytest.mark.parametrize("target", TARGETS)
def test_every_verb_of_an_image_starts(containers: dict[str, str], target: str) -> None:
    for verb in VERBS[target]:
        result = run_in(containers[target], "headbits", verb, "--help")
        assert result.returncode == 0, f"headbits {verb}: {result.stderr[-2000:]}"
        assert f"usage: headbits {verb}" in result.stdout
    absent = run_in(containers[target], "headbits", "demo", "--help")
    assert absent.returncode == 1
    assert "headbits demo: not available in this installation (headbits.devtools" in absent.stderr


@contextmanager
def service(name: str, verb: str, env: dict[str, str], log: Path,
            volumes: tuple[str, ...] = ()) -> Iterator[None]:
    """`headbits <verb>` in a container of the image, as the chart's container command runs it;
    its output goes to `log`, which a failing test shows."""
    with log.open("wb") as output:
        process = subprocess.Popen([*run_args(name, env, volumes), "headbits", verb],
                                   stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


@pytest.mark.kafka
def test_featurizer_and_scorer_images_stream_heads_to_scores(
    containers: dict[str, str], kafka_bootstrap: str, tmp_path: Path,
) -> None:
    models = export_versions(tmp_path / "models", versions=(1,))
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by UID 10001
    tmp_path.chmod(0o755)
    topics = Topics(kafka_bootstrap)
    # The services create no topic, as under the chart, whose KafkaTopics create the compacted
    # rules topic the scorer follows.
    rules_topic = f"{topics['heads']}.rules"
    ensure_compacted_topics(topics.settings, [rules_topic])
    env = {**topics.env, "HEADBITS_METRICS_PORT": "-1", "HEADBITS_CREATE_TOPICS": "false",
           "HEADBITS_RULES_TOPIC": rules_topic}
    heads = make_heads(200)
    produce_heads(topics.settings, topics["heads"], heads)
    scorer_env = {**env, "HEADBITS_MODEL_DIR": "/models", "HEADBITS_WRITE_SCORES": "true"}
    logs = {verb: tmp_path / f"{verb}.log" for verb in ("featurizer", "scorer")}
    with service(containers["featurizer"], "featurizer", env, logs["featurizer"]), \
            service(containers["scorer"], "scorer", scorer_env, logs["scorer"],
                    (f"{models}:/models:ro",)):
        scores = read_topic(topics.settings, topics["scores"], "score",
                            lambda got: len({s["uid"] for s in got}) >= len(heads), timeout=240)
    uids = {s["uid"] for s in scores}
    assert uids == {h.uid for h in heads}, (
        f"{len(uids)} of {len(heads)} heads scored\n"
        + "\n".join(f"--- {verb}:\n{path.read_text(errors='replace')[-3000:]}"
                    for verb, path in logs.items()))
    assert {s["model_version"] for s in scores} == {1}
