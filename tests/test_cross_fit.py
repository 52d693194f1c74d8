"""Cross-fitted tail calibration: every training row is scored by a model that never saw its
capture group. The training runs are replaced by a recorder (named so): what is checked is which
rows each fold's model trains on and scores, not TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from headbits.common.records import PayloadHead
from headbits.featurizer.bits import HeadBatch
from headbits.scorer.backend import ModelInfo, Scores
from headbits.trainer.dataset import LabelledHeads
from headbits.trainer.train import TrainSettings, cross_fitted_tails

N = 8


def head(row: int, payload: bool = True) -> PayloadHead:
    body = row.to_bytes(4, "big") if payload else b""
    return PayloadHead(f"C{row}", 1.7e9, "s", "10.0.0.1", 1024, "10.0.0.2", 80, "tcp", (),
                       body, b"", len(body), 0, False, False)


@dataclass
class RecordingModel:
    """Stands in for a trained model: remembers its training rows; scores a row 1 if it trained
    on it (a leak), 0 if not, and predicts class 0."""

    trained_on: set[int]
    scored: list[int]

    def score(self, batch: HeadBatch) -> Scores:
        rows = [int.from_bytes(bytes(b[:4]), "big") for b in batch.head_bytes]
        self.scored.extend(rows)
        leaked = np.array([row in self.trained_on for row in rows], dtype=np.float32)
        count = len(rows)
        return Scores(np.zeros(count, np.float32), np.zeros((count, 2), np.float32),
                      np.ones((count, 1), np.float32), np.zeros(count, np.float32), leaked,
                      np.ones(count, np.float32), np.zeros((count, 2, 4), np.int32),
                      model=ModelInfo("headbits", 0, N, ("tls",)))


def test_every_row_with_payload_is_scored_once_by_a_model_that_never_saw_its_group():
    data = LabelledHeads()
    for row in range(300):
        data.add(head(row, payload=row % 10 != 0), "tls", "zeek", f"file{row // 7}.pcap")
    models, scored = [], []

    def train_on(rows: LabelledHeads, **kwargs) -> RecordingModel:
        models.append(RecordingModel({int(h.uid[1:]) for h in rows.heads}, scored))
        return models[-1]

    scores, predicted = cross_fitted_tails(data, TrainSettings(n=N, calibration_folds=3),
                                           train_on)
    with_payload = [row for row in range(300) if row % 10 != 0]
    assert len(models) == 3
    assert sorted(scored) == with_payload
    assert not scores.any()  # no fold model scored a row it trained on
    assert predicted.tolist() == [0] * len(with_payload)
    groups_seen = [{row // 7 for row in model.trained_on} for model in models]
    assert all(len(seen) < 300 // 7 for seen in groups_seen)


def test_too_few_groups_to_cross_fit_are_refused():
    data = LabelledHeads()
    for row in range(20):
        data.add(head(row), "tls", "zeek", "one.pcap")
    with pytest.raises(ValueError, match="cross-fitting"):
        cross_fitted_tails(data, TrainSettings(n=N, calibration_folds=3),
                           lambda rows, **kwargs: RecordingModel(set(), []))
