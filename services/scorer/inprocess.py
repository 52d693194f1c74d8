"""Scoring in this process with the exported SavedModel (tests, `headbits score`, small sites).

The SavedModel does everything from packed bytes inside its graph (bit unpacking, the validity
mask, errors, the per-class threshold lookup), so this backend only cuts batches into chunks and
stitches the outputs back together. The trainer scores its in-memory model through the same
`score_in_chunks`, so an exported version scores exactly as it did before export.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported: no C++ noise

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from headbits.common.model_repository import METADATA_FILE, read_metadata
from headbits.featurizer.bits import HeadBatch
from headbits.scorer.backend import (
    INPUT_HEAD_BYTES,
    INPUT_HEAD_LENGTHS,
    OUTPUT_CLASSES,
    SCORE_OUTPUTS,
    SIGNATURE_NAME,
    ModelInfo,
    Scores,
    ScoringBackend,
)

CHUNK_ROWS = 8192

ServeFunction = Callable[..., Mapping[str, tf.Tensor]]


def heads_for_model(batch: HeadBatch, model_n: int) -> HeadBatch:
    """The batch at the model's N: wider heads are cut, narrower ones can never be scored."""
    if batch.n < model_n:
        raise ValueError(f"heads of N={batch.n} are narrower than the model's N={model_n}")
    return batch.truncate(model_n) if batch.n > model_n else batch


def score_in_chunks(
    serve: ServeFunction, batch: HeadBatch, model: ModelInfo, chunk_rows: int = CHUNK_ROWS
) -> Scores:
    """Run a serving function over `batch` in chunks of `chunk_rows` rows (bounded memory)."""
    batch = heads_for_model(batch, model.n)
    head_bytes = np.ascontiguousarray(batch.head_bytes, dtype=np.uint8)
    head_lengths = np.ascontiguousarray(batch.head_lengths, dtype=np.int32)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SCORE_OUTPUTS}
    # At least one call, so an empty batch still yields correctly shaped empty outputs.
    for start in range(0, max(len(batch), 1), chunk_rows):
        outputs = serve(**{
            INPUT_HEAD_BYTES: tf.constant(head_bytes[start : start + chunk_rows]),
            INPUT_HEAD_LENGTHS: tf.constant(head_lengths[start : start + chunk_rows]),
        })
        for name in SCORE_OUTPUTS:
            parts[name].append(outputs[name].numpy())
    return Scores.from_outputs({name: np.concatenate(chunks) for name, chunks in parts.items()},
                               model)


class SavedModelBackend(ScoringBackend):
    """One exported version loaded with `tf.saved_model.load`, called through `serving_default`."""

    def __init__(self, version_dir: Path, chunk_rows: int = CHUNK_ROWS, threads: int = 0) -> None:
        """`threads` > 0 sets TensorFlow's thread pools (effective before TensorFlow first runs
        in this process; later they are fixed and this is a no-op)."""
        if threads > 0:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:
                pass
        metadata = read_metadata(version_dir)
        self._info = ModelInfo(
            name=str(metadata["model"]),
            version=int(metadata["version"]),
            n=int(metadata["n"]),
            classes=tuple(metadata["classes"]),
        )
        self._loaded = tf.saved_model.load(str(version_dir))
        self._serve = self._loaded.signatures[SIGNATURE_NAME]
        self._chunk_rows = chunk_rows
        self._check_against_metadata(version_dir)

    def _check_against_metadata(self, version_dir: Path) -> None:
        width = self._serve.structured_input_signature[1][INPUT_HEAD_BYTES].shape[1]
        classes = self._serve(**{  # [batch, C], every row the same: one row is enough
            INPUT_HEAD_BYTES: tf.zeros([1, width], tf.uint8),
            INPUT_HEAD_LENGTHS: tf.zeros([1, 2], tf.int32),
        })[OUTPUT_CLASSES].numpy()[0]
        graph_classes = tuple(c.decode("utf-8") for c in classes)
        if width != 2 * self._info.n or graph_classes != self._info.classes:
            raise ValueError(
                f"{version_dir}: the SavedModel (N={width // 2}, classes {graph_classes}) does "
                f"not match {METADATA_FILE} (N={self._info.n}, classes {self._info.classes})"
            )

    def info(self) -> ModelInfo:
        return self._info

    def score(self, batch: HeadBatch) -> Scores:
        return score_in_chunks(self._serve, batch, self._info, self._chunk_rows)

    def close(self) -> None:
        self._serve = None
        self._loaded = None
