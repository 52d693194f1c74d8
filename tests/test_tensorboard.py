"""A training run's TensorBoard event files, read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.serving_models import CLASSES, labelled_heads

pytestmark = pytest.mark.slow


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0,
                                                                "tensors": 0})
    accumulator.Reload()
    return accumulator


def tags(accumulator: EventAccumulator) -> set[str]:
    found = accumulator.Tags()
    return set(found.get("scalars", [])) | set(found.get("tensors", [])) | set(
        found.get("histograms", []))


def scalar(accumulator: EventAccumulator, tag: str) -> list[float]:
    if tag in accumulator.Tags().get("scalars", []):
        return [event.value for event in accumulator.Scalars(tag)]
    from tensorflow.python.framework import tensor_util

    return [float(tensor_util.MakeNdarray(event.tensor_proto))
            for event in accumulator.Tensors(tag)]


def test_training_writes_losses_per_epoch_the_graph_and_the_calibration(tmp_path: Path):
    from headbits.trainer.model import TrainingConfig, train

    heads, labels = labelled_heads(400, seed=1)
    validation, validation_labels = labelled_heads(200, seed=2)
    config = TrainingConfig(n=8, hidden_sizes=(32, 16), bottleneck=8, max_epochs=3,
                            batch_size=128, patience=5, target_fpr=0.05, min_threshold_rows=10)
    log_dir = tmp_path / "headbits-v1"
    trained = train(heads, labels, CLASSES, validation, validation_labels, config,
                    progress=False, log_dir=log_dir)

    epochs = len(trained.history["loss"])
    training = events(log_dir / "train")
    assert len(scalar(training, "epoch_loss")) == epochs
    assert np.allclose(scalar(training, "epoch_loss"), trained.history["loss"], rtol=1e-4)
    assert len(scalar(events(log_dir / "validation"), "epoch_loss")) == epochs

    calibration = events(log_dir / "calibration")
    graph = calibration.Graph()
    assert any(node.op == "Placeholder" and "head_bytes" in node.name for node in graph.node), \
        "the serving signature's graph, with its head_bytes input"
    for index, name in enumerate(CLASSES):
        assert scalar(calibration, f"threshold/{name}") == pytest.approx(
            [float(trained.thresholds[index])])
    assert scalar(calibration, "calibration/target_false_positive_rate") == pytest.approx([0.05])
    assert {f"reconstruction_error/{name}" for name in CLASSES} | {"novelty_score/all"} <= tags(
        calibration)
