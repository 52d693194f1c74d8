"""TensorBoard event files of a training run: what was learnt, epoch by epoch, and calibrated.

Keras' own callback writes the losses and validation metrics per epoch (`<log_dir>/train`,
`<log_dir>/validation`); `write_calibration` adds what the run decided after training
(`<log_dir>/calibration`): each class's threshold and calibration rows, the target
false-positive rate, histograms of the held-out reconstruction error per predicted class and of
the novelty score, and the graph of the exported serving signature (Keras does not write the
graph of a model with its own train step). Runs are named by model version, so TensorBoard compares
versions side by side. Event files are written with TensorFlow's own summary writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf


def epoch_callback(log_dir: Path):
    """The Keras callback that logs losses and metrics per epoch."""
    import keras

    return keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False,
                                       histogram_freq=0, update_freq="epoch")


def write_calibration(
    log_dir: Path, classes: Sequence[str], thresholds: np.ndarray, calibration_rows: np.ndarray,
    target_fpr: float, errors: np.ndarray, predicted: np.ndarray, novelty: np.ndarray,
    serve: tf.types.experimental.PolymorphicFunction | None = None,
) -> None:
    """Scalars and histograms of the run's calibration (step 0: one calibration per run), and
    the graph of `serve` (the serving signature's function)."""
    writer = tf.summary.create_file_writer(str(Path(log_dir) / "calibration"))
    with writer.as_default():
        if serve is not None:
            tf.summary.graph(serve.get_concrete_function().graph)
        tf.summary.scalar("calibration/target_false_positive_rate", target_fpr, step=0)
        for index, name in enumerate(classes):
            tf.summary.scalar(f"threshold/{name}", float(thresholds[index]), step=0)
            tf.summary.scalar(f"calibration_rows/{name}", int(calibration_rows[index]), step=0)
            rows = predicted == index
            if rows.any():
                tf.summary.histogram(f"reconstruction_error/{name}", errors[rows], step=0)
        if len(novelty):
            tf.summary.histogram("novelty_score/all", novelty, step=0)
    writer.flush()
    writer.close()
