"""A plain linear softmax over the bits and the validity mask: the classifier to beat.

The evaluation lessons found such a classifier a strong reference for protocol identification;
the model's own classifier earns its extra layers only by beating it on the same split, with the
same data, class weighting and early stopping. Evaluation reports both.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from headbits.featurizer.bits import HeadBatch, model_inputs
from headbits.scorer.inprocess import heads_for_model
from headbits.trainer.model import VALIDATION_BATCH_ROWS, TrainingConfig, class_weights


@dataclass(eq=False)
class LinearReference:
    """A trained linear softmax at N = `n`."""

    n: int
    network: keras.Model

    def predict(self, batch: HeadBatch) -> np.ndarray:
        """int [rows]: the most probable class index per row."""
        logits = self.network.predict(_features(batch, self.n), batch_size=VALIDATION_BATCH_ROWS,
                                      verbose=0)
        return np.argmax(logits, axis=1)


def train_linear_reference(
    train: HeadBatch,
    train_labels: np.ndarray,
    n_classes: int,
    validation: HeadBatch,
    validation_labels: np.ndarray,
    config: TrainingConfig,
) -> LinearReference:
    """Fit the softmax on `train`, early-stopped on `validation` as the model is."""
    weights = class_weights(train_labels, n_classes, config.class_balance)
    keras.utils.set_random_seed(config.seed)
    network = keras.Sequential([keras.Input((32 * config.n,)), keras.layers.Dense(n_classes)])
    network.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, min_delta=config.min_improvement,
        restore_best_weights=True)
    network.fit(
        _features(train, config.n), np.asarray(train_labels), sample_weight=weights[train_labels],
        validation_data=(_features(validation, config.n), np.asarray(validation_labels),
                         weights[validation_labels]),
        batch_size=config.batch_size, epochs=config.max_epochs, callbacks=[stopping], verbose=0,
    )
    return LinearReference(config.n, network)


def _features(batch: HeadBatch, n: int) -> np.ndarray:
    bits, mask = model_inputs(heads_for_model(batch, n))
    return np.concatenate([bits, mask], axis=1).astype(np.float32)
