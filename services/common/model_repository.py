"""The model repository layout, in one place: versions, metadata, labels, TF Serving config.

The repository is TF Serving's layout: `<models>/<name>/<version>/` holds a SavedModel and
`assets.extra/headbits.json` (N, classes, thresholds, metrics). TF Serving's file-system source
treats every integer-named subdirectory as a version and ignores other names, so an export in
progress (a non-integer temporary directory) is never served. Which version each label names, what
is loaded and how labels got there is the rollout state, a small JSON file beside TF Serving's
`model_config_file` (`<config>.labels.json`).

The layout is the same in a directory and in an object store; common/model_store publishes and
lists versions in either. Everything that reads or writes this layout (the in-process backend,
the trainer's export and rollout, `headbits model`, the TF Serving stand-in) uses these
functions, so there is one definition of what a version is.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from headbits.common.settings import setting

MODEL_NAME = "headbits"
METADATA_FILE = Path("assets.extra") / "headbits.json"
LABELS = ("stable", "canary")
LABEL_PATTERN = re.compile(r"[a-zA-Z0-9_]+")  # TF Serving's rule for label names


@dataclass(frozen=True)
class RepositoryLocation:
    """Where the repository is: shared by every settings class that reads or writes it."""

    models_dir: Path = setting(Path("models"), "model repository base directory")
    model_store: str = setting(
        "", "where versions are published and listed: empty, models_dir; s3://bucket/prefix, an "
            "S3 bucket (AWS, MinIO, Ceph RGW), configured by TF Serving's environment variables "
            "S3_ENDPOINT, S3_USE_HTTPS, S3_VERIFY_SSL, AWS_REGION and the AWS credentials; "
            "gs://bucket/prefix, a GCS bucket (Application Default Credentials)"
    )


class RepositoryError(RuntimeError):
    """A repository file that cannot be read or a rollout step that cannot be done."""


def version_dirs(base_path: Path) -> dict[int, Path]:
    """Version -> directory under one model's base path, by TF Serving's rule (integer names)."""
    base_path = Path(base_path)
    if not base_path.is_dir():
        return {}
    return {int(c.name): c for c in base_path.iterdir() if c.is_dir() and c.name.isdigit()}


def model_versions(models_dir: Path, model_name: str = MODEL_NAME) -> list[int]:
    """The versions of `model_name` under `models_dir`, ascending."""
    return sorted(version_dirs(Path(models_dir) / model_name))


def latest_version_dir(models_dir: Path, model_name: str = MODEL_NAME) -> Path:
    """The highest version, the one TF Serving's default policy serves."""
    versions = model_versions(models_dir, model_name)
    if not versions:
        raise FileNotFoundError(f"no model versions in {Path(models_dir) / model_name}")
    return Path(models_dir) / model_name / str(versions[-1])


def resolve_version_dir(path: Path) -> Path:
    """`path` itself if it is a version directory, else the latest version under it."""
    path = Path(path)
    return path if (path / METADATA_FILE).is_file() else latest_version_dir(path)


def read_metadata(version_dir: Path) -> dict:
    """The version's `assets.extra/headbits.json`."""
    path = Path(version_dir) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {version_dir} is not a headbits model version")
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ModelVersion:
    """A version as a model store lists it (common/model_store): where it is, what it says."""

    version: int
    location: str  # a directory or a bucket URL (s3://, gs://)
    metadata: dict


@dataclass
class RolloutState:
    """Which version each label names, what is loaded, and how labels got there."""

    labels: dict[str, int] = field(default_factory=dict)
    previous: dict[str, list[int]] = field(default_factory=dict)  # per label, rollback stack
    history: list[dict] = field(default_factory=list)

    def loaded(self) -> list[int]:
        """Versions the server keeps: each label's version and stable's rollback target."""
        keep = set(self.labels.values())
        if self.previous.get("stable"):
            keep.add(self.previous["stable"][-1])
        return sorted(keep)

    def to_dict(self) -> dict:
        return {"labels": self.labels, "previous": self.previous, "history": self.history}

    @classmethod
    def from_dict(cls, document: dict) -> RolloutState:
        return cls(
            labels={k: int(v) for k, v in document.get("labels", {}).items()},
            previous={k: [int(v) for v in vs] for k, vs in document.get("previous", {}).items()},
            history=list(document.get("history", [])),
        )


def state_path(config_file: Path) -> Path:
    return config_file.with_name(config_file.name + ".labels.json")


def read_state(config_file: Path) -> RolloutState:
    path = state_path(config_file)
    if not path.exists():
        return RolloutState()
    try:
        return RolloutState.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise RepositoryError(f"{path}: unreadable rollout state ({error})") from error


def write_atomically(path: Path, text: str) -> None:
    """Readers (TF Serving's config poll) see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def model_server_config(name: str, base_path: str, versions: list[int], labels: dict[str, int]):
    """TF Serving's ModelServerConfig: these versions loaded, these labels on them."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(
        name=name, base_path=base_path, model_platform="tensorflow"
    )
    model.model_version_policy.specific.versions.extend(sorted(versions))
    for label in sorted(labels):
        model.version_labels[label] = labels[label]
    return config


def config_text(config) -> str:
    """The config in protobuf text format, as TF Serving's --model_config_file reads it."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def read_model_server_config(path: Path):
    """Parse a model_config_file; RepositoryError names the file and the parser's complaint."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(Path(path).read_text(), config)
    except (OSError, text_format.ParseError) as error:
        raise RepositoryError(f"{path}: {error}") from error
    return config


def config_labels(config_file: Path, model_name: str) -> dict[str, int]:
    """The version labels a model_config_file gives `model_name` ({} without the file): the
    labels where something other than `headbits model` writes the config (a ConfigMap)."""
    if not Path(config_file).exists():
        return {}
    for model in read_model_server_config(config_file).model_config_list.config:
        if model.name == model_name:
            return dict(model.version_labels)
    return {}
