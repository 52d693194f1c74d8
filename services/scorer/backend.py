"""The scoring seam: what the scorer needs from a model, whoever runs it.

Two implementations sit beside this file, each one file: `inprocess.py` loads the SavedModel into
this process; `tfserving.py` calls TensorFlow Serving's `PredictionService.Predict` over gRPC. The
scorer loop never knows which one it has, and the contract tests in `tests/` run both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from headbits.common.model_repository import MODEL_NAME
from headbits.featurizer.bits import HeadBatch

__all__ = ["MODEL_NAME"]

# The SavedModel's serving signature (see "Model contract" in docs/architecture.md).
SIGNATURE_NAME = "serving_default"
INPUT_HEAD_BYTES = "head_bytes"  # uint8 [batch, 2N]: orig bytes then resp bytes
INPUT_HEAD_LENGTHS = "head_lengths"  # int32 [batch, 2]: bytes seen per direction (0..N)
OUTPUT_RECONSTRUCTION_ERROR = "reconstruction_error"  # float32 [batch]
OUTPUT_DIRECTION_ERROR = "direction_error"  # float32 [batch, 2]
OUTPUT_PROTOCOL_PROBS = "protocol_probs"  # float32 [batch, C]
OUTPUT_THRESHOLD = "threshold"  # float32 [batch]: threshold for the row's predicted class
OUTPUT_NOVELTY_SCORE = "novelty_score"  # float32 [batch]: how far the head is from training data
OUTPUT_TAIL_PROBABILITY = "tail_probability"  # float32 [batch]: share of held-out normal >= it
OUTPUT_TOP_BYTES = "top_bytes"  # int32 [batch, 2, K]: per direction, worst byte offsets first
OUTPUT_CLASSES = "classes"  # string [batch, C]: class names in protocol_probs order, every row
SCORE_OUTPUTS = (
    OUTPUT_RECONSTRUCTION_ERROR,
    OUTPUT_DIRECTION_ERROR,
    OUTPUT_PROTOCOL_PROBS,
    OUTPUT_THRESHOLD,
    OUTPUT_NOVELTY_SCORE,
    OUTPUT_TAIL_PROBABILITY,
    OUTPUT_TOP_BYTES,
)
"""What scoring fetches; `classes` repeats the same names in every row, so backends read it once."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a backend learned from the model itself, so the scorer never guesses."""

    name: str
    version: int
    n: int
    classes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Scores:
    """One batch's model outputs, row-aligned with the HeadBatch that was scored.

    `tail_probability` is calibrated on capture files the model never trained on: the share of
    held-out normal connections (of the row's predicted class, where it had rows enough) whose
    `novelty_score` is at least the row's. A rate `r` alerts on about `r` of normal traffic, so
    an operator changes the rate without retraining. `top_bytes[row, direction]` lists that
    direction's byte offsets with the largest weighted per-bit error, worst first.
    """

    reconstruction_error: np.ndarray
    direction_error: np.ndarray
    protocol_probs: np.ndarray
    threshold: np.ndarray
    novelty_score: np.ndarray
    tail_probability: np.ndarray
    top_bytes: np.ndarray
    model: ModelInfo

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray], model: ModelInfo) -> Scores:
        """From the signature's outputs by name (every name of `SCORE_OUTPUTS`)."""
        missing = [name for name in SCORE_OUTPUTS if name not in outputs]
        if missing:
            raise ValueError(f"model {model.name} version {model.version} lacks the outputs "
                             f"{missing} of the model contract: retrain it")
        return cls(*(outputs[name] for name in SCORE_OUTPUTS), model=model)

    def predicted_protocols(self) -> list[str]:
        return [self.model.classes[i] for i in np.argmax(self.protocol_probs, axis=1)]

    def is_anomalous(self) -> np.ndarray:
        return self.reconstruction_error > self.threshold


class ScoringBackend(ABC):
    """Scores batches of packed heads with one model version.

    `info()` returns the model's name, version, N and classes. It is cheap enough to call for
    every batch: a remote backend asks its server the first time and then only after a response
    named another version (a moved label); it raises `BackendUnavailable` if the model cannot be
    reached. `score(batch)` accepts heads of any N >= the model's N (they are truncated to the
    model's N) and returns Scores row-aligned with the batch (an empty batch gives empty Scores),
    or raises `BackendUnavailable` (retry later, nothing was scored; `ModelChanged` when the
    model moved to another N meanwhile: call `info()` and build the batch again) or `ValueError`
    (this input can never be scored). `close()` releases connections; the caller that created
    the backend closes it.
    """

    @abstractmethod
    def info(self) -> ModelInfo: ...

    @abstractmethod
    def score(self, batch: HeadBatch) -> Scores: ...

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release what the backend holds."""


@dataclass(frozen=True, slots=True)
class Disagreement:
    """How far a shadow (canary) version's verdicts are from the primary's on the same rows."""

    rows: int
    anomaly_verdicts: int  # rows where one version alerts and the other does not
    predicted_protocols: int  # rows where the top class differs
    mean_abs_error_delta: float  # mean |reconstruction_error difference|


def disagreement(primary: Scores, shadow: Scores) -> Disagreement:
    """Row-aligned comparison of two versions' scores of the same heads (shadow scoring)."""
    if len(primary.reconstruction_error) != len(shadow.reconstruction_error):
        raise ValueError("primary and shadow scores are not row-aligned")
    rows = len(primary.reconstruction_error)
    primary_top = np.asarray(primary.predicted_protocols(), dtype=object)
    shadow_top = np.asarray(shadow.predicted_protocols(), dtype=object)
    delta = np.abs(primary.reconstruction_error - shadow.reconstruction_error)
    return Disagreement(
        rows=rows,
        anomaly_verdicts=int(np.count_nonzero(primary.is_anomalous() != shadow.is_anomalous())),
        predicted_protocols=int(np.count_nonzero(primary_top != shadow_top)),
        mean_abs_error_delta=float(delta.mean()) if rows else 0.0,
    )


class BackendUnavailable(RuntimeError):
    """The model cannot answer now (server down, model not loaded); retrying may succeed."""


class ModelChanged(BackendUnavailable):
    """The label moved to a version of another N while a batch was in flight: nothing was
    scored; `info()` now describes the new version and the batch can be built again."""
