"""Write a trained model as a version in TensorFlow Serving's layout: `<base>/headbits/<version>/`.

The SavedModel's `serving_default` signature is the contract in `scorer/backend.py`; its
`assets.extra/headbits.json` says what the version is (N, classes, thresholds, data, metrics).
The version is written into the store's local staging directory and then published by the store
(common/model_store), which makes it appear only when complete: a rename on a volume, an upload
under a temporary name and then a copy, `saved_model.pb` last, in a bucket.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import metadata as package_metadata
from pathlib import Path

import tensorflow as tf

from headbits.common.model_repository import METADATA_FILE, MODEL_NAME
from headbits.common.model_store import ModelStore, VolumeStore
from headbits.scorer.backend import SIGNATURE_NAME
from headbits.trainer.model import TrainedModel


def export_model(
    trained: TrainedModel,
    base_dir: Path,
    version: int | None = None,
    metadata: dict | None = None,
) -> Path:
    """Export `trained` as `<base_dir>/headbits/<version>/` and return that directory."""
    store = VolumeStore(Path(base_dir) / MODEL_NAME)
    return Path(publish_model(trained, store, version, metadata))


def publish_model(
    trained: TrainedModel,
    store: ModelStore,
    version: int | None = None,
    metadata: dict | None = None,
) -> str:
    """Publish `trained` as a version in `store` and return where it is.

    `version` defaults to one more than the highest version the store lists. `metadata` (e.g.
    `{"training": {...window, sizes...}, "metrics": {...}}`) is stored in headbits.json next to
    what the model knows about itself; its keys must not collide with those.
    """
    if version is None:
        version = store.next_version()
    if version < 1:
        raise ValueError(f"model versions are positive integers, not {version}")
    document = describe(trained, version, metadata or {})
    with store.staging(version) as staging:
        tf.saved_model.save(trained.graph, str(staging),
                            signatures={SIGNATURE_NAME: trained.graph.serve})
        (staging / METADATA_FILE).parent.mkdir(exist_ok=True)
        (staging / METADATA_FILE).write_text(json.dumps(document, indent=2) + "\n",
                                             encoding="utf-8")
        return store.publish(staging, version)


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
