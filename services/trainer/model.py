"""The headbits model: a bit-level autoencoder and a protocol classifier, side by side.

The capstone's layer stack (dense, relu, bottleneck) with what its evaluation showed it lacked:
packed bytes are unpacked inside the graph and paired with a validity mask (so "absent" differs
from a NUL byte), the decoder ends in a sigmoid and is trained with bit-wise cross-entropy over
seen bits only, and early stopping on held-back captures keeps it from memorising the noise
(nonces, ids) that follows a protocol's fixed opening. The classifier head names the protocol a
head looks like, so an alert can say "looks like SSH, port says HTTPS". Reconstruction errors
weigh each bit by how predictable it is in held-out normal traffic, so noise does not count.

The autoencoder learns only the rows flagged normal (`autoencoder_rows`); the classifier learns
all rows. Thresholds come from `calibrate.py` on the validation split's normal rows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported: no C++ noise

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from headbits.featurizer.bits import HeadBatch, check_n
from headbits.scorer.backend import (
    INPUT_HEAD_BYTES,
    INPUT_HEAD_LENGTHS,
    MODEL_NAME,
    OUTPUT_CLASSES,
    OUTPUT_DIRECTION_ERROR,
    OUTPUT_NOVELTY_SCORE,
    OUTPUT_PROTOCOL_PROBS,
    OUTPUT_RECONSTRUCTION_ERROR,
    OUTPUT_TAIL_PROBABILITY,
    OUTPUT_THRESHOLD,
    OUTPUT_TOP_BYTES,
    ModelInfo,
    Scores,
)
from headbits.scorer.inprocess import heads_for_model, score_in_chunks
from headbits.trainer import tensorboard
from headbits.trainer.calibrate import (
    TailCalibration,
    bit_weights,
    class_thresholds,
    has_own_threshold,
    tail_calibration,
    threshold_at_fpr,
)

# Small dense layers gain nothing from many threads, and the machine is shared with the services.
TENSORFLOW_THREADS = min(2, os.cpu_count() or 1)
VALIDATION_BATCH_ROWS = 4096
TOP_BYTES = 4
"""Byte offsets per direction an alert names as deviating most."""
WIDE_BYTES = 16
"""Bytes per direction the classifier's byte-value table reads: past a protocol's fixed opening
the bytes are nonces and lengths, whose exact values a table would only memorise."""
NOVELTY_REFERENCE_ROWS = 20000
"""Training rows the novelty model's means and covariance are estimated from (a sample)."""


def _limit_tensorflow_threads() -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(TENSORFLOW_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(TENSORFLOW_THREADS)
    except RuntimeError:
        pass  # TensorFlow already ran in this process: its thread pools are fixed by then


_limit_tensorflow_threads()


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is shaped, trained and calibrated.

    `target_fpr` defaults to 0.001: at one alert per thousand normal connections a sensor seeing a
    million connections a day yields about a thousand alerts, the most a triage queue absorbs; a
    smaller rate cannot be measured on held-out sets of the usual size (below `1/target_fpr` rows
    the threshold is simply the largest held-out error). `min_threshold_rows` defaults to
    `1/target_fpr` for the same reason: with fewer rows a class's own threshold would only be the
    maximum of a handful of rows, so it takes the global one.
    """

    n: int = 16
    hidden_sizes: tuple[int, ...] = ()  # encoder widths; () scales with N: (16N, 8N, 4N)
    bottleneck: int = 0  # code width; 0 scales with N: N/2 (see `code_size`)
    max_epochs: int = 60
    batch_size: int = 256
    patience: int = 5
    min_improvement: float = 1e-3  # smaller drops of the validation loss do not count as progress
    learning_rate: float = 1e-3
    target_fpr: float = 0.001
    min_threshold_rows: int = 1000
    classifier_weight: float = 1.0
    classifier_hidden: int = 0  # the classifier branch's width; 0 scales with N: 8N
    classifier_dropout: float = 0.2
    class_balance: float = 0.5  # class weights are (mean count / class count) ** class_balance
    wide: str = "bytes"  # a linear term added to the class logits: "bytes" (one weight vector per
    # byte position and value, "absent" included), "bits" (on bits + mask) or "" (none)
    label_smoothing: float = 0.0
    deep_auxiliary: bool = True  # with a wide part, the deep part's own logits are trained too
    weight_bits: bool = True  # weigh each bit's error by how predictable normal traffic makes it
    seed: int = 0

    def __post_init__(self) -> None:
        check_n(self.n)
        if any(size <= 0 for size in self.hidden_sizes) or self.bottleneck < 0:
            raise ValueError("layer sizes must be positive")
        if min(self.max_epochs, self.batch_size, self.patience) <= 0:
            raise ValueError("max_epochs, batch_size and patience must be positive")
        if not 0.0 < self.target_fpr < 1.0:
            raise ValueError(f"target_fpr {self.target_fpr} is not in (0, 1)")
        if self.learning_rate <= 0 or min(self.classifier_weight, self.min_improvement,
                                          self.class_balance, self.classifier_hidden) < 0:
            raise ValueError("learning_rate must be positive, classifier_weight, "
                             "min_improvement, class_balance and classifier_hidden >= 0")
        if self.wide not in ("bytes", "bits", ""):
            raise ValueError(f"wide {self.wide!r} is not 'bytes', 'bits' or ''")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing {self.label_smoothing} is not in [0, 1)")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout {self.classifier_dropout} is not in [0, 1)")

    @property
    def encoder_sizes(self) -> tuple[int, ...]:
        return self.hidden_sizes or (16 * self.n, 8 * self.n, 4 * self.n)

    @property
    def code_size(self) -> int:
        """A narrow code: a protocol's fixed opening fits in a few numbers, and a wider code
        lets the decoder copy a foreign opening through instead of flagging it (at N=16, a code
        of 8 instead of 32 raised the TLS-vs-SSH, -DNS and -HTTP AUROC of cross-validation over
        capture files on every seed tried)."""
        return self.bottleneck or self.n // 2

    @property
    def classifier_size(self) -> int:
        return self.classifier_hidden or 8 * self.n


def unpack_heads(head_bytes: tf.Tensor, head_lengths: tf.Tensor, n: int) -> tuple[tf.Tensor, ...]:
    """uint8 [B, 2N] + int32 [B, 2] -> float32 bits and validity mask, [B, 16N] each, MSB first.

    The same maths as `featurizer.bits.model_inputs`, in graph ops so that TF Serving receives
    packed bytes (8x fewer than bits) and no client has to know the encoding.
    """
    shifts = tf.constant([7, 6, 5, 4, 3, 2, 1, 0], tf.int32)
    values = tf.cast(head_bytes, tf.int32)[:, :, None]
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(values, shifts), 1)
    bits = tf.reshape(tf.cast(bits, tf.float32), [-1, 16 * n])
    lengths = tf.clip_by_value(tf.cast(head_lengths, tf.int32), 0, n)
    seen = tf.range(n, dtype=tf.int32)[None, None, :] < lengths[:, :, None]  # [B, 2, N]
    mask = tf.repeat(tf.reshape(tf.cast(seen, tf.float32), [-1, 2 * n]), 8, axis=1)
    return bits * mask, mask


def byte_value_index(head_bytes: tf.Tensor, head_lengths: tf.Tensor, n: int,
                     first: int) -> tf.Tensor:
    """int32 [B, 2F]: of the first F = min(first, N) bytes per direction, position * 257 + byte
    value, value 256 where the byte was not seen."""
    first = min(first, n)
    lengths = tf.clip_by_value(tf.cast(head_lengths, tf.int32), 0, n)
    seen = tf.range(first, dtype=tf.int32)[None, None, :] < lengths[:, :, None]  # [B, 2, F]
    values = tf.reshape(tf.cast(head_bytes, tf.int32), [-1, 2, n])[:, :, :first]
    values = tf.reshape(tf.where(seen, values, 256), [-1, 2 * first])
    return values + 257 * tf.range(2 * first, dtype=tf.int32)[None, :]


def bit_losses(bits: tf.Tensor, mask: tf.Tensor, bit_logits: tf.Tensor) -> tf.Tensor:
    """Bit-wise cross-entropy of the sigmoid output, zero for unseen bits. From logits: the
    same value as BCE on the sigmoid, without its clipping."""
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=bits, logits=bit_logits) * mask


def row_errors(losses: tf.Tensor, mask: tf.Tensor, n: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean loss over seen bits: per row [B], and per direction [B, 2] (0 with no bytes)."""
    direction_loss = tf.reduce_sum(tf.reshape(losses, [-1, 2, 8 * n]), axis=2)
    direction_seen = tf.reduce_sum(tf.reshape(mask, [-1, 2, 8 * n]), axis=2)
    row = tf.math.divide_no_nan(tf.reduce_sum(direction_loss, 1), tf.reduce_sum(direction_seen, 1))
    return row, tf.math.divide_no_nan(direction_loss, direction_seen)


def top_byte_offsets(losses: tf.Tensor, n: int, k: int) -> tf.Tensor:
    """int32 [B, 2, k]: per direction, the byte offsets whose summed bit losses are largest."""
    byte_losses = tf.reduce_sum(tf.reshape(losses, [-1, 2, n, 8]), axis=3)
    return tf.math.top_k(byte_losses, k=k, sorted=True).indices


def tail_probabilities(novelty: tf.Tensor, segment: tf.Tensor, keys: tf.Tensor,
                       segment_end: tf.Tensor, segment_size: tf.Tensor) -> tf.Tensor:
    """Split-conformal tail probability (#{calibration >= s} + 1) / (m + 1) of each row's score
    among its segment's held-out normal scores; see `calibrate.tail_calibration` for the keys."""
    key = tf.cast(segment, tf.float64) + _unit_interval(tf.cast(novelty, tf.float64))
    below = tf.searchsorted(keys[None, :], key[None, :], side="left")[0]
    at_least = tf.gather(segment_end, segment) - tf.cast(below, tf.int32)
    return tf.cast((at_least + 1) / (tf.gather(segment_size, segment) + 1), tf.float32)


def _unit_interval(score: tf.Tensor) -> tf.Tensor:
    """A non-negative score mapped monotonically into [0, 1), as `calibrate.unit_interval`."""
    score = tf.maximum(score, 0.0)
    return score / (1.0 + score)


class HeadbitsNetwork(keras.Model):
    """[bits*mask, mask] -> relu encoder -> relu code -> relu decoder -> 16N logits (sigmoid),
    and, in a branch of its own, [bits*mask, mask] -> relu -> dropout -> C class logits.

    The classifier does not hang off the bottleneck: the bottleneck is shaped by the normal
    traffic alone (often one protocol), which leaves it blind to what tells the others apart.
    Trained with a masked BCE on normal rows + weighted, class-balanced sparse CE on all rows.
    """

    def __init__(self, config: TrainingConfig, n_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n = config.n
        self.classifier_weight = config.classifier_weight
        dense = keras.layers.Dense
        self.encoder = [dense(size, activation="relu", name=f"encoder_{i}")
                        for i, size in enumerate(config.encoder_sizes)]
        self.code = dense(config.code_size, activation="relu", name="bottleneck")
        self.decoder = [dense(size, activation="relu", name=f"decoder_{i}")
                        for i, size in enumerate(reversed(config.encoder_sizes))]
        self.bit_logits = dense(16 * config.n, name="bit_logits")
        self.classifier = dense(config.classifier_size, activation="relu", name="classifier")
        self.classifier_dropout = keras.layers.Dropout(config.classifier_dropout)
        self.class_logits = dense(n_classes, name="class_logits")
        self.wide = config.wide
        if config.wide == "bytes":
            self.wide_logits = keras.layers.Embedding(2 * min(config.n, WIDE_BYTES) * 257,
                                                      n_classes,
                                                      embeddings_initializer="zeros",
                                                      name="wide_logits")
        elif config.wide == "bits":
            self.wide_logits = dense(n_classes, use_bias=False, name="wide_logits")
        else:
            self.wide_logits = None
        self.label_smoothing = config.label_smoothing
        self.deep_auxiliary = config.deep_auxiliary
        self.n_classes = n_classes
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.classifier_tracker = keras.metrics.Mean(name="classifier_loss")

    def call(self, inputs, training=False):
        """(head_bytes, head_lengths) -> (bits, mask, bit logits, class logits)."""
        head_bytes, head_lengths = inputs
        bits, mask = unpack_heads(head_bytes, head_lengths, self.n)
        features = tf.concat([bits, mask], axis=1)
        hidden = features
        for layer in self.encoder:
            hidden = layer(hidden)
        hidden = self.code(hidden)
        for layer in self.decoder:
            hidden = layer(hidden)
        _, class_logits, deep_logits = self.classify(features, head_bytes, head_lengths,
                                                     training)
        return bits, mask, self.bit_logits(hidden), class_logits, deep_logits

    def classify(self, features: tf.Tensor, head_bytes: tf.Tensor, head_lengths: tf.Tensor,
                 training: bool = False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """[B, 32N] bits*mask ++ mask -> (the classifier's hidden layer [B, H], logits [B, C],
        the deep part's own logits [B, C])."""
        hidden = self.classifier(features)
        deep_logits = self.class_logits(self.classifier_dropout(hidden, training=training))
        logits = deep_logits
        if self.wide == "bytes":
            logits = logits + tf.reduce_sum(self.wide_logits(
                byte_value_index(head_bytes, head_lengths, self.n, WIDE_BYTES)), axis=1)
        elif self.wide == "bits":
            logits = logits + self.wide_logits(features)
        return hidden, logits, deep_logits

    def classifier_features(self, head_bytes: tf.Tensor, head_lengths: tf.Tensor) -> tf.Tensor:
        """[B, H]: the classifier's hidden layer, where the novelty model measures distances."""
        bits, mask = unpack_heads(head_bytes, head_lengths, self.n)
        return self.classifier(tf.concat([bits, mask], axis=1))

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.classifier_tracker]

    def _step_loss(self, data, training: bool) -> tf.Tensor:
        (head_bytes, head_lengths), (labels, autoencoder_rows, class_weights) = data
        bits, mask, bit_logits, class_logits, deep_logits = self((head_bytes, head_lengths),
                                                                 training=training)
        normal_mask = mask * tf.cast(autoencoder_rows, tf.float32)[:, None]
        reconstruction = tf.math.divide_no_nan(
            tf.reduce_sum(bit_losses(bits, normal_mask, bit_logits)), tf.reduce_sum(normal_mask)
        )
        targets = tf.one_hot(tf.cast(labels, tf.int32), self.n_classes)
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / self.n_classes
        cross_entropy = tf.nn.softmax_cross_entropy_with_logits(labels=targets,
                                                                logits=class_logits)
        if self.wide and self.deep_auxiliary:
            # The deep part learns to classify on its own too: its hidden layer, where the
            # novelty distances are measured, then stays as discriminative as without the
            # wide part, which otherwise takes over most of the work.
            cross_entropy += tf.nn.softmax_cross_entropy_with_logits(labels=targets,
                                                                     logits=deep_logits)
        classifier = tf.math.divide_no_nan(tf.reduce_sum(cross_entropy * class_weights),
                                           tf.reduce_sum(class_weights))
        total = reconstruction + self.classifier_weight * classifier
        self.loss_tracker.update_state(total)
        self.reconstruction_tracker.update_state(reconstruction)
        self.classifier_tracker.update_state(classifier)
        return total

    def train_step(self, data):
        with tf.GradientTape() as tape:
            total = self._step_loss(data, training=True)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(total, variables), variables, strict=True))
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, data):
        self._step_loss(data, training=False)
        return {metric.name: metric.result() for metric in self.metrics}


class ScoringGraph(tf.Module):
    """What gets exported: packed heads in, errors, class probabilities, novelty and thresholds out.

    Errors are means of the bit-wise loss weighted by `bit_weights` (see `calibrate.bit_weights`),
    so the bits that are noise even in normal traffic (nonces, ids) do not drown the signal.

    The novelty score is the smallest Mahalanobis distance, in the classifier's hidden layer, to
    the mean of any protocol label the training data held (rare labels included, so a rare but
    seen protocol is near its own mean), under one covariance shared by all labels (Lee et al.,
    2018): `novelty_whitening` is the Cholesky factor of its inverse, `novelty_means` the
    whitened means. It was chosen by leave-protocol-out measurement (bench/novelty_methods.py)
    over the reconstruction error, the classifier's max probability and energy, and
    nearest-neighbour distances. Its tail probability looks the score up among held-out normal
    scores of the row's predicted class (`tail_*`, see `calibrate.tail_calibration`).
    """

    def __init__(self, network: HeadbitsNetwork, classes: Sequence[str]) -> None:
        super().__init__(name=MODEL_NAME)
        self.network = network
        self.class_names = tf.constant(list(classes), tf.string)
        # Filled after training; variables, so they are saved with the weights.
        self.thresholds = tf.Variable(tf.zeros([len(classes)], tf.float32), trainable=False)
        self.bit_weights = tf.Variable(tf.ones([16 * network.n], tf.float32), trainable=False)
        hidden = network.classifier.units
        self.novelty_whitening = tf.Variable(tf.eye(hidden), trainable=False)
        self.novelty_means = tf.Variable(tf.zeros([1, hidden]), trainable=False,
                                         shape=tf.TensorShape([None, hidden]))
        self.tail_segment_of_class = tf.Variable(tf.fill([len(classes)], len(classes)),
                                                 trainable=False)
        self.tail_keys = tf.Variable(tf.zeros([1], tf.float64), trainable=False,
                                     shape=tf.TensorShape([None]))
        self.tail_segment_end = tf.Variable(tf.ones([len(classes) + 1], tf.int32),
                                            trainable=False)
        self.tail_segment_size = tf.Variable(tf.ones([len(classes) + 1], tf.int32),
                                             trainable=False)
        n = network.n
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, 2 * n], tf.uint8, name=INPUT_HEAD_BYTES),
            tf.TensorSpec([None, 2], tf.int32, name=INPUT_HEAD_LENGTHS),
        ])
        self.bit_loss_sums = tf.function(self._bit_loss_sums, input_signature=[
            tf.TensorSpec([None, 2 * n], tf.uint8), tf.TensorSpec([None, 2], tf.int32),
        ])
        self.hidden_features = tf.function(self.network.classifier_features, input_signature=[
            tf.TensorSpec([None, 2 * n], tf.uint8), tf.TensorSpec([None, 2], tf.int32),
        ])

    def _serve(self, head_bytes: tf.Tensor, head_lengths: tf.Tensor) -> dict[str, tf.Tensor]:
        n = self.network.n
        bits, mask = unpack_heads(head_bytes, head_lengths, n)
        features = tf.concat([bits, mask], axis=1)
        hidden = features
        for layer in self.network.encoder:
            hidden = layer(hidden)
        hidden = self.network.code(hidden)
        for layer in self.network.decoder:
            hidden = layer(hidden)
        bit_logits = self.network.bit_logits(hidden)
        classifier_hidden, class_logits, _ = self.network.classify(features, head_bytes,
                                                                    head_lengths)
        probs = tf.nn.softmax(class_logits, axis=1)
        predicted = tf.argmax(probs, axis=1, output_type=tf.int32)
        weighted_mask = mask * self.bit_weights[None, :]
        losses = bit_losses(bits, weighted_mask, bit_logits)
        error, direction_error = row_errors(losses, weighted_mask, n)
        novelty = self._novelty(classifier_hidden)
        tail = tail_probabilities(novelty, tf.gather(self.tail_segment_of_class, predicted),
                                  self.tail_keys, self.tail_segment_end, self.tail_segment_size)
        return {
            OUTPUT_RECONSTRUCTION_ERROR: error,
            OUTPUT_DIRECTION_ERROR: direction_error,
            OUTPUT_PROTOCOL_PROBS: probs,
            OUTPUT_THRESHOLD: tf.gather(self.thresholds, predicted),
            OUTPUT_NOVELTY_SCORE: novelty,
            OUTPUT_TAIL_PROBABILITY: tail,
            OUTPUT_TOP_BYTES: top_byte_offsets(losses, n, min(TOP_BYTES, n)),
            # Batch-major like every output, so TF Serving's batching can split it: [batch, C].
            OUTPUT_CLASSES: tf.tile(self.class_names[None, :], [tf.shape(head_bytes)[0], 1]),
        }

    def _novelty(self, classifier_hidden: tf.Tensor) -> tf.Tensor:
        """float32 [B]: smallest squared Mahalanobis distance to a training label's mean."""
        whitened = tf.matmul(classifier_hidden, self.novelty_whitening)
        means = self.novelty_means
        distances = (tf.reduce_sum(whitened ** 2, axis=1, keepdims=True)
                     - 2.0 * tf.matmul(whitened, means, transpose_b=True)
                     + tf.reduce_sum(means ** 2, axis=1)[None, :])
        return tf.maximum(tf.reduce_min(distances, axis=1), 0.0)

    def fit_novelty(self, batch: HeadBatch, labels: np.ndarray) -> None:
        """Estimate the label means and the shared covariance of the hidden layer on `batch`
        (training rows, `labels` any per-row names) and set the whitening and whitened means."""
        hidden = np.concatenate([
            self.hidden_features(part.head_bytes, part.head_lengths.astype(np.int32)).numpy()
            for part in (batch.select(slice(start, start + VALIDATION_BATCH_ROWS))
                         for start in range(0, len(batch), VALIDATION_BATCH_ROWS))
        ]).astype(np.float64)
        whitening, means = novelty_model(hidden, np.asarray(labels))
        self.novelty_whitening.assign(whitening.astype(np.float32))
        self.novelty_means.assign((means @ whitening).astype(np.float32))

    def set_tail_calibration(self, calibration: TailCalibration) -> None:
        self.tail_segment_of_class.assign(calibration.segment_of_class)
        self.tail_keys.assign(calibration.keys)
        self.tail_segment_end.assign(calibration.segment_end)
        self.tail_segment_size.assign(calibration.segment_size)

    def _bit_loss_sums(self, head_bytes: tf.Tensor, head_lengths: tf.Tensor) -> tf.Tensor:
        """[2, 16N]: per bit, the summed unweighted loss and how many rows saw it."""
        bits, mask, bit_logits, _, _ = self.network((head_bytes, head_lengths))
        return tf.stack([tf.reduce_sum(bit_losses(bits, mask, bit_logits), axis=0),
                         tf.reduce_sum(mask, axis=0)])

    def fit_bit_weights(self, batch: HeadBatch) -> np.ndarray:
        """Set `bit_weights` from the per-bit losses on `batch` (normal rows), and return them."""
        totals = np.zeros((2, 16 * self.network.n))
        for start in range(0, len(batch), VALIDATION_BATCH_ROWS):
            part = batch.select(slice(start, start + VALIDATION_BATCH_ROWS))
            totals += self.bit_loss_sums(part.head_bytes, part.head_lengths.astype(np.int32))
        weights = bit_weights(totals[0], totals[1])
        self.bit_weights.assign(weights)
        return weights


def novelty_model(hidden: np.ndarray, labels: np.ndarray,
                  ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """(whitening [H, H], means [L, H]) of a tied-covariance Gaussian per label.

    `whitening` is the Cholesky factor of the inverse covariance, so the squared Mahalanobis
    distance of h to mean m is ||(h - m) @ whitening||^2. `ridge` (relative to the mean
    variance) keeps the covariance invertible where hidden units are dead or collinear.
    """
    names, index = np.unique(labels, return_inverse=True)
    means = np.stack([hidden[index == i].mean(axis=0) for i in range(len(names))])
    centred = hidden - means[index]
    covariance = centred.T @ centred / max(len(hidden) - len(names), 1)
    covariance += ridge * max(np.trace(covariance) / len(covariance), 1e-6) * np.eye(
        len(covariance))
    precision = np.linalg.inv(covariance)
    return np.linalg.cholesky((precision + precision.T) / 2), means


@dataclass(eq=False)
class TrainedModel:
    """A trained, calibrated model in memory; `export.export_model` writes it as a version.

    `thresholds[c]` applies to rows predicted as class c; `calibration_rows[c]` is how many
    held-out normal rows were predicted as c (classes below `config.min_threshold_rows` use the
    global threshold).
    """

    config: TrainingConfig
    classes: tuple[str, ...]
    thresholds: np.ndarray
    global_threshold: float
    calibration_rows: np.ndarray
    bit_weights: np.ndarray
    history: dict[str, list[float]]
    graph: ScoringGraph

    def score(self, batch: HeadBatch) -> Scores:
        return score_in_chunks(self.graph.serve, batch,
                               ModelInfo(MODEL_NAME, 0, self.config.n, self.classes))

    @property
    def own_class_threshold(self) -> np.ndarray:
        """bool [C]: classes calibrated on their own rows (the others use the global threshold)."""
        return has_own_threshold(self.calibration_rows, self.config.min_threshold_rows)

    def architecture(self) -> dict:
        sizes = self.config.encoder_sizes
        return {
            "input": f"packed heads -> bits*mask ++ mask ({32 * self.config.n} floats)",
            "encoder": [*sizes, self.config.code_size],
            "decoder": [*reversed(sizes), 16 * self.config.n],
            "activations": "relu; sigmoid bit output; softmax classes",
            "classifier": f"input -> {self.config.classifier_size} relu -> dropout "
                          f"{self.config.classifier_dropout} -> logits"
                          + {"bytes": f" + a weight vector per value of each of the first "
                                      f"{min(self.config.n, WIDE_BYTES)} bytes per direction",
                             "bits": " + linear on bits + mask", "": ""}[self.config.wide]
                          + f" -> softmax over {len(self.classes)} classes",
            "loss": "masked bit-wise BCE on normal rows + classifier_weight * class-balanced "
                    "sparse CE",
            "error": "mean bit-wise BCE over seen bits, weighted by each bit's predictability "
                     "in held-out normal traffic" if self.config.weight_bits
                     else "mean bit-wise BCE over seen bits",
        }


def train(
    train: HeadBatch,
    train_labels: np.ndarray,
    classes: Sequence[str],
    validation: HeadBatch,
    validation_labels: np.ndarray,
    config: TrainingConfig,
    autoencoder_rows: np.ndarray | None = None,
    validation_autoencoder_rows: np.ndarray | None = None,
    progress: bool = True,
    novelty_labels: Sequence[str] | None = None,
    log_dir: Path | None = None,
    cross_fitted_tails: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainedModel:
    """Train with early stopping on `validation`, then calibrate on its normal rows.

    Labels are class indices into `classes`. `autoencoder_rows` (bool per row, default all) marks
    the rows the autoencoder learns as normal; the classifier learns every row. `novelty_labels`
    (a protocol name per training row, default the class) are the groups whose means the novelty
    score measures distances to: with the real labels, a protocol too rare to be a class is still
    near its own mean, so it is normal, not novel. Thresholds and tail probabilities are set on
    validation rows only: capture groups the weights never learned. With `log_dir`, the run
    writes TensorBoard event files there (trainer/tensorboard.py). `cross_fitted_tails`
    (novelty scores, predicted class indices) are more held-out normal scores for the tail
    calibration, each from a model that did not train on its row (see `train.fit`).
    """
    classes = tuple(classes)
    weights = class_weights(train_labels, len(classes), config.class_balance)
    train_set = _dataset(train, train_labels, autoencoder_rows=autoencoder_rows,
                         classes=classes, config=config, split="train", weights=weights)
    validation_set = _dataset(validation, validation_labels,
                              autoencoder_rows=validation_autoencoder_rows,
                              classes=classes, config=config, split="validation",
                              weights=weights)
    keras.utils.set_random_seed(config.seed)
    network = HeadbitsNetwork(config, len(classes), name=MODEL_NAME)
    network.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, min_delta=config.min_improvement,
        restore_best_weights=True)
    fitted = network.fit(
        train_set.shuffle(len(train), seed=config.seed).batch(config.batch_size),
        validation_data=validation_set.batch(VALIDATION_BATCH_ROWS),
        epochs=config.max_epochs, verbose=_keras_verbosity(progress),
        callbacks=[stopping] + ([tensorboard.epoch_callback(log_dir)] if log_dir else []),
        shuffle=False,  # the dataset reshuffles itself each epoch, seeded
    )
    graph = ScoringGraph(network, classes)
    normal = _normal_rows(validation, validation_autoencoder_rows)
    if not normal.any():
        raise ValueError("no normal validation rows with payload to calibrate thresholds on")
    calibration = heads_for_model(validation, config.n).select(normal)
    if config.weight_bits:
        # Held-out rows, not training ones: the network has partly memorised the noise it was
        # trained on, which would make nonces look predictable.
        graph.fit_bit_weights(calibration)
    graph.fit_novelty(*_novelty_reference(heads_for_model(train, config.n), train_labels,
                                          novelty_labels, config.seed))
    model = ModelInfo(MODEL_NAME, 0, config.n, classes)
    held_out = score_in_chunks(graph.serve, calibration, model)
    predicted = np.argmax(held_out.protocol_probs, axis=1)
    errors = held_out.reconstruction_error
    thresholds = class_thresholds(errors, predicted, len(classes), config.target_fpr,
                                  config.min_threshold_rows)
    graph.thresholds.assign(thresholds)
    # The novelty calibration counts every validation row of a trained protocol as normal,
    # whatever the autoencoder's baseline: the classifier learned them all.
    every_opening = validation.head_lengths.sum(axis=1) > 0
    tails = score_in_chunks(graph.serve, heads_for_model(validation, config.n).select(
        every_opening), model)
    tail_scores, tail_classes = tails.novelty_score, np.argmax(tails.protocol_probs, axis=1)
    if cross_fitted_tails is not None:
        tail_scores = np.concatenate([tail_scores, cross_fitted_tails[0]])
        tail_classes = np.concatenate([tail_classes, cross_fitted_tails[1]])
    graph.set_tail_calibration(tail_calibration(tail_scores, tail_classes, len(classes),
                                                config.min_threshold_rows))
    calibration_rows = np.bincount(predicted, minlength=len(classes))
    if log_dir is not None:
        tensorboard.write_calibration(log_dir, classes, thresholds, calibration_rows,
                                      config.target_fpr, errors, predicted, tails.novelty_score,
                                      graph.serve)
    return TrainedModel(
        config=config,
        classes=classes,
        thresholds=thresholds,
        global_threshold=threshold_at_fpr(errors, config.target_fpr),
        calibration_rows=calibration_rows,
        bit_weights=graph.bit_weights.numpy(),
        history={name: [float(v) for v in values] for name, values in fitted.history.items()},
        graph=graph,
    )


def _novelty_reference(
    train: HeadBatch, train_labels: np.ndarray, novelty_labels: Sequence[str] | None, seed: int,
) -> tuple[HeadBatch, np.ndarray]:
    """A seeded sample of at most NOVELTY_REFERENCE_ROWS training rows and their group names."""
    names = np.asarray(train_labels if novelty_labels is None else list(novelty_labels))
    if names.shape != (len(train),):
        raise ValueError(f"novelty labels need one value per training row ({len(train)} rows, "
                         f"{names.shape} labels)")
    rows = np.arange(len(train))
    if len(rows) > NOVELTY_REFERENCE_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, NOVELTY_REFERENCE_ROWS,
                                                          replace=False))
    return train.select(rows), names[rows]


def class_weights(labels: np.ndarray, n_classes: int, balance: float) -> np.ndarray:
    """float32 [C]: (mean class count / class count) ** balance, 0 for classes without rows.

    Captures are dominated by a few protocols (DNS, HTTP); unweighted, the classifier learns
    those and calls the rest `other`. balance 1 weighs every class equally, 0 every row.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be class indices in 0..{n_classes - 1}")
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = (counts[present].mean() / counts[present]) ** balance
    return weights.astype(np.float32)


def _keras_verbosity(progress: bool) -> int:
    """A live progress bar on a terminal, one line per epoch in logs (bars garble them)."""
    if not progress:
        return 0
    return 1 if sys.stdout.isatty() else 2


def _dataset(
    batch: HeadBatch,
    labels: np.ndarray,
    *,
    autoencoder_rows: np.ndarray | None,
    classes: tuple[str, ...],
    config: TrainingConfig,
    split: str,
    weights: np.ndarray,
) -> tf.data.Dataset:
    batch = heads_for_model(batch, config.n)
    labels = np.asarray(labels)
    rows = np.ones(len(batch), bool) if autoencoder_rows is None else np.asarray(autoencoder_rows)
    if len(batch) == 0:
        raise ValueError(f"the {split} split is empty")
    if labels.shape != (len(batch),) or rows.shape != (len(batch),):
        raise ValueError(f"{split}: labels and autoencoder rows need one value per row "
                         f"({len(batch)} rows, {labels.shape} labels, {rows.shape} flags)")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"{split}: labels must be class indices in 0..{len(classes) - 1}")
    return tf.data.Dataset.from_tensor_slices((
        (batch.head_bytes, batch.head_lengths.astype(np.int32)),
        (labels.astype(np.int32), rows.astype(bool), weights[labels]),
    ))


def _normal_rows(validation: HeadBatch, autoencoder_rows: np.ndarray | None) -> np.ndarray:
    """Held-out rows the thresholds are set on: normal, and with at least one byte seen (a row
    without payload has error 0 by definition and would only dilute the rate)."""
    has_payload = validation.head_lengths.sum(axis=1) > 0
    if autoencoder_rows is None:
        return has_payload
    return has_payload & np.asarray(autoencoder_rows, dtype=bool)
