"""Write a trained model as a version in TensorFlow Serving's layout: `<base>/headbits/<version>/`.

The SavedModel's `serving_default` signature is the contract in `scorer/backend.py`; its
`assets.extra/headbits.json` says what the version is (N, classes, thresholds, data, metrics).
A version appears atomically: it is written to a temporary directory beside the versions, whose
name is not an integer so TF Serving ignores it, and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from importlib import metadata as package_metadata
from pathlib import Path

import tensorflow as tf

from headbits.common.model_repository import METADATA_FILE, MODEL_NAME, model_versions
from headbits.scorer.backend import SIGNATURE_NAME
from headbits.trainer.model import TrainedModel


def export_model(
    trained: TrainedModel,
    base_dir: Path,
    version: int | None = None,
    metadata: dict | None = None,
) -> Path:
    """Export `trained` as `<base_dir>/headbits/<version>/` and return that directory.

    `version` defaults to one more than the highest existing version. `metadata` (e.g.
    `{"training": {...window, sizes...}, "metrics": {...}}`) is stored in headbits.json next to
    what the model knows about itself; its keys must not collide with those.
    """
    model_dir = Path(base_dir) / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = max(model_versions(base_dir), default=0) + 1
    if version < 1:
        raise ValueError(f"model versions are positive integers, not {version}")
    version_dir = model_dir / str(version)
    if version_dir.exists():
        raise FileExistsError(f"{version_dir} already exists: versions are never overwritten")
    document = describe(trained, version, metadata or {})
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_dir))
    try:
        tf.saved_model.save(trained.graph, str(staging),
                            signatures={SIGNATURE_NAME: trained.graph.serve})
        (staging / METADATA_FILE).parent.mkdir(exist_ok=True)
        (staging / METADATA_FILE).write_text(json.dumps(document, indent=2) + "\n",
                                             encoding="utf-8")
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the model server may be another user
        os.rename(staging, version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version_dir


def describe(trained: TrainedModel, version: int, extra: dict) -> dict:
    """The headbits.json document of a version."""
    config = trained.config
    document = {
        "model": MODEL_NAME,
        "version": version,
        "n": config.n,
        "classes": list(trained.classes),
        "thresholds": {
            "per_class": _by_class(trained, trained.thresholds.tolist()),
            "global": float(trained.global_threshold),
            "own_class_threshold": _by_class(trained, trained.own_class_threshold.tolist()),
            "calibration_rows": _by_class(trained, trained.calibration_rows.tolist()),
        },
        "target_fpr": config.target_fpr,
        "min_threshold_rows": config.min_threshold_rows,
        # Mean bit weight per byte position (orig bytes, then resp): 0 where normal traffic is
        # noise (nonces, ids), 1 where it is fixed.
        "byte_weights": trained.bit_weights.reshape(-1, 8).mean(axis=1).round(3).tolist(),
        "architecture": trained.architecture(),
        "config": {**vars(config), "hidden_sizes": list(config.encoder_sizes),
                   "bottleneck": config.code_size},
        "epochs_run": len(trained.history.get("loss", [])),
        "history": trained.history,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "headbits_version": package_metadata.version("headbits"),
        "tensorflow_version": tf.__version__,
    }
    clashes = sorted(set(document) & set(extra))
    if clashes:
        raise ValueError(f"metadata keys {clashes} are reserved for what the model records")
    return {**document, **extra}


def _by_class(trained: TrainedModel, values: list) -> dict:
    return dict(zip(trained.classes, values, strict=True))
