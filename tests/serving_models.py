"""Tiny real model versions for the serving tests, trained once per test session.

Trained with the project's own trainer and written with its exporter, so the stand-in, the
gRPC backend and the repository commands see exactly what production sees, only smaller.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np

from headbits.featurizer.bits import HeadBatch, pack_heads

CLASSES = ("http", "ssh")
# version -> (N, seed): versions 1 and 2 differ in weights, version 3 also in N.
VERSIONS = {1: (8, 0), 2: (8, 1), 3: (16, 2)}


def labelled_heads(rows: int, seed: int) -> tuple[HeadBatch, np.ndarray]:
    """HTTP-like and SSH-like heads with random tails, N=64, labels as class indices."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), rows)
    tails = [rng.bytes(40) for _ in range(rows)]
    orig = [
        (b"GET /index.html HTTP/1.1\r\nHost: " if label == 0 else b"SSH-2.0-OpenSSH_9.2p1\r\n")
        + tail
        for label, tail in zip(labels, tails, strict=True)
    ]
    resp = [b"HTTP/1.1 200 OK\r\n" if label == 0 else b"SSH-2.0-dropbear\r\n" for label in labels]
    return pack_heads(orig, resp, 64), labels


@functools.cache
def _trained(version: int):
    from headbits.trainer.model import TrainingConfig, train

    n, seed = VERSIONS[version]
    config = TrainingConfig(
        n=n, hidden_sizes=(32, 16), bottleneck=8, max_epochs=2, batch_size=128, patience=1,
        target_fpr=0.05, min_threshold_rows=10, seed=seed,
    )
    heads, labels = labelled_heads(600, seed)
    validation, validation_labels = labelled_heads(300, seed + 100)
    return train(heads, labels, CLASSES, validation, validation_labels, config, progress=False)


def export_versions(base_dir: Path, versions: tuple[int, ...] = (1, 2, 3)) -> Path:
    """Write the given versions under `<base_dir>/headbits/` (training each once per session)."""
    from headbits.trainer.export import export_model

    for version in versions:
        target = base_dir / "headbits" / str(version)
        if target.exists():
            shutil.rmtree(target)
        export_model(_trained(version), base_dir, version=version,
                     metadata={"metrics": {"auroc": 0.5 + version / 10}})
    return base_dir


def write_config(path: Path, base: Path, versions, labels) -> Path:
    """The model_config_file of model `headbits` at `base`, as `headbits model` writes it."""
    from headbits.common.model_repository import config_text, model_server_config, write_atomically

    config = model_server_config("headbits", str(base), versions, labels)
    write_atomically(path, config_text(config))
    return path
