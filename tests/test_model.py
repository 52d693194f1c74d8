"""The model, its calibration, its export and the in-process backend, on real TensorFlow.

Training data: real TLS ClientHellos written by Python's ssl module (through memory BIOs, no
network), HTTP request lines and SSH banners; the autoencoder learns TLS only (the capstone's
setting), the classifier learns all three.
"""

from __future__ import annotations

import json
import ssl
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from headbits.common.model_repository import METADATA_FILE, latest_version_dir, model_versions
from headbits.featurizer.bits import SUPPORTED_N, HeadBatch, model_inputs, pack_heads
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
    SIGNATURE_NAME,
)
from headbits.scorer.inprocess import SavedModelBackend
from headbits.trainer.export import export_model
from headbits.trainer.model import (
    TOP_BYTES,
    TrainedModel,
    TrainingConfig,
    byte_value_index,
    train,
)

pytestmark = pytest.mark.slow

CLASSES = ("tls", "http", "ssh")
N = 16
CONFIG = TrainingConfig(n=N, hidden_sizes=(64, 32), bottleneck=16, max_epochs=20, batch_size=128,
                        patience=3, target_fpr=0.01, min_threshold_rows=100, seed=1)


def tls_client_hello() -> bytes:
    """A real ClientHello from the ssl module; its random and key share differ every call."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    connection = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="example.org")
    with pytest.raises(ssl.SSLWantReadError):
        connection.do_handshake()
    return outgoing.read()


def labelled_heads(rows_per_class: int, seed: int) -> tuple[HeadBatch, np.ndarray]:
    rng = np.random.default_rng(seed)
    paths = [b"/", b"/index.html", b"/api/v1/items?id=", b"/static/app.js", b"/login"]
    servers = [b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", b"SSH-2.0-dropbear_2022.83\r\n"]
    orig, resp, labels = [], [], []
    for _ in range(rows_per_class):
        orig.append(tls_client_hello())
        resp.append(b"")
        path = paths[rng.integers(len(paths))] + str(rng.integers(10**6)).encode()
        orig.append(b"GET " + path + b" HTTP/1.1\r\nHost: example.org\r\n\r\n")
        resp.append(b"HTTP/1.1 200 OK\r\nServer: nginx\r\n")
        orig.append(b"SSH-2.0-OpenSSH_" + str(rng.integers(7, 10)).encode() + b".2\r\n")
        resp.append(servers[rng.integers(len(servers))])
        labels += [0, 1, 2]
    return pack_heads(orig, resp, N), np.array(labels, dtype=np.int32)


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[HeadBatch, np.ndarray]]:
    return {"train": labelled_heads(600, 1), "validation": labelled_heads(250, 2),
            "test": labelled_heads(150, 3)}


@pytest.fixture(scope="module")
def trained(splits) -> TrainedModel:
    (train_batch, train_labels), (validation, validation_labels) = (splits["train"],
                                                                    splits["validation"])
    return train(train_batch, train_labels, CLASSES, validation, validation_labels, CONFIG,
                 autoencoder_rows=train_labels == 0,
                 validation_autoencoder_rows=validation_labels == 0, progress=False)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    return export_model(trained, tmp_path_factory.mktemp("models"),
                        metadata={"training": {"rows": 1800}, "metrics": {"auc": 0.5}})


def test_training_reduces_both_losses(trained):
    history = trained.history
    assert history["val_reconstruction_loss"][-1] < 0.8 * history["val_reconstruction_loss"][0]
    assert min(history["val_classifier_loss"]) < 0.1 * history["val_classifier_loss"][0]
    assert len(history["loss"]) <= CONFIG.max_epochs


def test_classifier_separates_the_protocols(trained, splits):
    batch, labels = splits["test"]
    predicted = np.argmax(trained.score(batch).protocol_probs, axis=1)
    assert np.mean(predicted == labels) > 0.97


def test_autoencoder_learns_only_the_normal_rows(trained, splits):
    """Learned on TLS alone, it reconstructs held-out TLS much better than HTTP or SSH."""
    batch, labels = splits["test"]
    errors = trained.score(batch).reconstruction_error
    assert np.median(errors[labels == 1]) > 3 * np.median(errors[labels == 0])
    assert np.median(errors[labels == 2]) > 3 * np.median(errors[labels == 0])


def test_errors_are_weighted_masked_means_per_direction(trained, splits):
    batch, _ = splits["test"]
    scores = trained.score(batch)
    _, mask = model_inputs(batch)
    weight_seen = (mask * trained.bit_weights).reshape(len(batch), 2, 8 * N).sum(axis=2)
    assert np.all(scores.direction_error[batch.head_lengths == 0] == 0)
    combined = (scores.direction_error * weight_seen).sum(axis=1) / weight_seen.sum(axis=1)
    np.testing.assert_allclose(scores.reconstruction_error, combined, rtol=1e-5, atol=1e-6)


def test_nonce_bits_weigh_less_than_the_record_header(trained):
    """The ClientHello's random (bytes 11 on) is noise in normal traffic; its header is fixed."""
    byte_weights = trained.bit_weights.reshape(-1, 8).mean(axis=1)
    assert byte_weights[:3].min() > 0.9  # 16 03 01: handshake record, TLS 1.0 record version
    assert byte_weights[11:N].max() < 0.3


def test_classes_output_is_batch_major(trained, splits):
    batch, _ = splits["test"]
    rows = batch.select(slice(0, 3))
    classes = trained.graph.serve(head_bytes=rows.head_bytes,
                                  head_lengths=rows.head_lengths.astype(np.int32))["classes"]
    assert classes.shape == (3, len(CLASSES))
    for row in classes.numpy():
        assert tuple(name.decode() for name in row) == CLASSES


def test_absent_bytes_do_not_change_any_output(trained, splits):
    """Bytes beyond a direction's length are absent: whatever they hold, the scores are equal."""
    batch, _ = splits["test"]
    lengths = batch.head_lengths.copy()
    lengths[:, 1] = np.minimum(lengths[:, 1], 3)
    clean = HeadBatch(batch.head_bytes.copy(), lengths)
    clean.head_bytes[:, N + 3 :] = 0
    dirty = HeadBatch(clean.head_bytes.copy(), lengths)
    dirty.head_bytes[:, N + 3 :] = 0xFF
    first, second = trained.score(clean), trained.score(dirty)
    np.testing.assert_array_equal(first.reconstruction_error, second.reconstruction_error)
    np.testing.assert_array_equal(first.protocol_probs, second.protocol_probs)


def test_threshold_is_the_predicted_class_threshold(trained, splits):
    batch, _ = splits["test"]
    scores = trained.score(batch)
    predicted = np.argmax(scores.protocol_probs, axis=1)
    np.testing.assert_array_equal(scores.threshold, trained.thresholds[predicted])


def test_calibrated_rate_holds_on_the_calibration_rows(trained, splits):
    validation, labels = splits["validation"]
    normal = validation.select(labels == 0)
    scores = trained.score(normal)
    assert trained.own_class_threshold[0]  # 250 held-out TLS rows >= min_threshold_rows
    assert np.mean(scores.is_anomalous()) <= CONFIG.target_fpr
    assert trained.global_threshold >= 0
    # Classes without enough normal held-out rows fall back to the global threshold.
    fallback = ~trained.own_class_threshold
    assert np.all(trained.thresholds[fallback] == np.float32(trained.global_threshold))


def test_saved_model_scores_exactly_like_the_trained_model(trained, exported, splits):
    batch, _ = splits["test"]
    expected = trained.score(batch)
    backend = SavedModelBackend(exported)
    actual = backend.score(batch)
    backend.close()
    for name in ("reconstruction_error", "direction_error", "protocol_probs", "threshold"):
        assert np.max(np.abs(getattr(actual, name) - getattr(expected, name))) <= 1e-6, name
    assert actual.model.version == 1 and expected.model.version == 0
    assert actual.model.classes == CLASSES and actual.model.n == N


def test_signature_is_exactly_the_contract(exported):
    import tensorflow as tf

    signature = tf.saved_model.load(str(exported)).signatures[SIGNATURE_NAME]
    inputs = signature.structured_input_signature[1]
    assert set(inputs) == {INPUT_HEAD_BYTES, INPUT_HEAD_LENGTHS}
    assert inputs[INPUT_HEAD_BYTES].dtype == tf.uint8
    assert inputs[INPUT_HEAD_BYTES].shape.as_list() == [None, 2 * N]
    assert inputs[INPUT_HEAD_LENGTHS].dtype == tf.int32
    assert inputs[INPUT_HEAD_LENGTHS].shape.as_list() == [None, 2]
    outputs = signature.structured_outputs
    expected = {
        OUTPUT_RECONSTRUCTION_ERROR: (tf.float32, [None]),
        OUTPUT_DIRECTION_ERROR: (tf.float32, [None, 2]),
        OUTPUT_PROTOCOL_PROBS: (tf.float32, [None, len(CLASSES)]),
        OUTPUT_THRESHOLD: (tf.float32, [None]),
        OUTPUT_NOVELTY_SCORE: (tf.float32, [None]),
        OUTPUT_TAIL_PROBABILITY: (tf.float32, [None]),
        OUTPUT_TOP_BYTES: (tf.int32, [None, 2, min(TOP_BYTES, N)]),
        OUTPUT_CLASSES: (tf.string, [None, len(CLASSES)]),
    }
    assert {name: (spec.dtype, spec.shape.as_list()) for name, spec in outputs.items()} == expected


def test_wider_heads_are_truncated_and_narrower_ones_refused(exported):
    backend = SavedModelBackend(exported)
    rng = np.random.default_rng(5)
    orig = [rng.bytes(int(k)) for k in rng.integers(0, 65, 300)]
    resp = [rng.bytes(int(k)) for k in rng.integers(0, 65, 300)]
    wide = backend.score(pack_heads(orig, resp, 64))
    narrow = backend.score(pack_heads(orig, resp, N))
    np.testing.assert_array_equal(wide.reconstruction_error, narrow.reconstruction_error)
    np.testing.assert_array_equal(wide.protocol_probs, narrow.protocol_probs)
    with pytest.raises(ValueError, match="narrower"):
        backend.score(pack_heads(orig, resp, 8))
    empty = backend.score(pack_heads([], [], N))
    assert empty.reconstruction_error.shape == (0,)
    assert empty.protocol_probs.shape == (0, len(CLASSES))


def test_scores_do_not_depend_on_chunking(exported, splits):
    batch, _ = splits["test"]
    whole = SavedModelBackend(exported).score(batch)
    chunked = SavedModelBackend(exported, chunk_rows=97).score(batch)
    np.testing.assert_allclose(chunked.reconstruction_error, whole.reconstruction_error,
                               rtol=1e-6, atol=1e-7)


def test_metadata_describes_the_version(trained, exported):
    document = json.loads((exported / METADATA_FILE).read_text())
    assert document["model"] == MODEL_NAME and document["version"] == 1
    assert document["n"] == N and document["classes"] == list(CLASSES)
    per_class = document["thresholds"]["per_class"]
    assert [per_class[c] for c in CLASSES] == trained.thresholds.tolist()
    assert document["thresholds"]["global"] == trained.global_threshold
    assert document["target_fpr"] == CONFIG.target_fpr
    assert document["training"] == {"rows": 1800} and document["metrics"] == {"auc": 0.5}
    assert document["architecture"]["encoder"] == [64, 32, 16]
    assert document["headbits_version"] and document["epochs_run"] >= 1
    assert datetime.fromisoformat(document["created"]).tzinfo is not None


def test_versions_count_up_and_never_overwrite(trained, tmp_path):
    first = export_model(trained, tmp_path)
    assert first == tmp_path / MODEL_NAME / "1"
    assert export_model(trained, tmp_path, version=7).name == "7"
    assert export_model(trained, tmp_path).name == "8"
    assert latest_version_dir(tmp_path) == tmp_path / MODEL_NAME / "8"
    with pytest.raises(FileExistsError):
        export_model(trained, tmp_path, version=7)
    with pytest.raises(ValueError, match="reserved"):
        export_model(trained, tmp_path, metadata={"classes": ["x"]})
    assert model_versions(tmp_path) == [1, 7, 8]


def test_a_failed_export_leaves_nothing_behind(trained, tmp_path):
    """The version directory appears whole or not at all (TF Serving polls the folder)."""
    with pytest.raises(TypeError):
        export_model(trained, tmp_path, metadata={"unserialisable": object()})
    assert list((tmp_path / MODEL_NAME).iterdir()) == []
    with pytest.raises(FileNotFoundError):
        latest_version_dir(tmp_path)


def test_bad_training_input_is_refused(splits):
    batch, labels = splits["validation"]
    with pytest.raises(ValueError, match="class indices"):
        train(batch, labels + 1, CLASSES, batch, labels, CONFIG, progress=False)
    with pytest.raises(ValueError, match="one value per row"):
        train(batch, labels[:-1], CLASSES, batch, labels, CONFIG, progress=False)
    with pytest.raises(ValueError, match="narrower"):
        train(batch.truncate(8), labels, CLASSES, batch, labels, CONFIG, progress=False)
    with pytest.raises(ValueError, match="not supported"):
        TrainingConfig(n=12)


@pytest.mark.parametrize("n", SUPPORTED_N)
def test_default_code_is_narrower_than_the_head(n):
    # A code as wide as the head lets the decoder copy a foreign opening through unflagged.
    assert TrainingConfig(n=n).code_size == n // 2
    assert TrainingConfig(n=n, bottleneck=3).code_size == 3


def test_tail_probability_is_calibrated_on_the_held_out_rows(trained, splits):
    validation, _ = splits["validation"]
    tails = trained.score(validation).tail_probability
    assert np.all((tails > 0) & (tails <= 1))
    for rate in (0.01, 0.05, 0.2):
        # Conformal: at most `rate` of the calibration rows themselves lie at or below it.
        assert np.mean(tails <= rate) <= rate + 1 / len(tails)


def test_heads_unlike_any_training_protocol_are_novel(trained, splits):
    batch, _ = splits["test"]
    rng = np.random.default_rng(5)
    modbus = [bytes([0, i % 256, 0, 0, 0, 6, 1, 3, 0, 0, 0, 10]) for i in range(100)]
    foreign = pack_heads(modbus, [bytes(rng.integers(0, 256, 9, dtype=np.uint8))
                                  for _ in range(100)], N)
    known = trained.score(batch)
    novel = trained.score(foreign)
    assert np.median(novel.novelty_score) > np.quantile(known.novelty_score, 0.99)
    assert np.mean(novel.tail_probability <= 0.01) >= 0.9
    assert np.mean(known.tail_probability <= 0.01) <= 0.05


def test_top_bytes_name_the_byte_that_was_changed(trained, splits):
    batch, labels = splits["test"]
    tls = batch.select(labels == 0)  # the autoencoder's normal traffic
    changed = tls.head_bytes.copy()
    changed[:, 1] ^= 0xFF  # the record's major version, 0x03 in every ClientHello
    scores = trained.score(HeadBatch(changed, tls.head_lengths))
    assert np.mean(scores.top_bytes[:, 0, 0] == 1) >= 0.9
    assert scores.top_bytes.shape == (len(tls), 2, min(TOP_BYTES, N))


def test_byte_table_index_names_position_and_value_and_absence():
    heads = pack_heads([b"\x16\x03", b""], [b"S", b"\x00\x00\x00\x00\x00\x00\x00\x00"], 8)
    index = byte_value_index(heads.head_bytes, heads.head_lengths.astype(np.int32), 8,
                             8).numpy()
    positions = 257 * np.arange(16)
    assert (index[0] - positions).tolist() == [0x16, 3] + [256] * 6 + [ord("S")] + [256] * 7
    # A NUL byte that was seen is value 0, not "absent".
    assert (index[1] - positions).tolist() == [256] * 8 + [0] * 8
    # Only the first bytes of each direction when asked for fewer.
    first = byte_value_index(heads.head_bytes, heads.head_lengths.astype(np.int32), 8, 2).numpy()
    assert (first - 257 * np.arange(4)).tolist() == [[0x16, 3, ord("S"), 256], [256, 256, 0, 0]]


def test_classifier_options_are_checked():
    with pytest.raises(ValueError, match="wide"):
        TrainingConfig(wide="trees")
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainingConfig(label_smoothing=1.0)
