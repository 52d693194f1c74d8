"""Feature records + model Scores -> alerts and score records: the scorer's pure part.

A connection alerts for `anomalous-bytes` when its reconstruction error is above the model's
threshold for it, and for `protocol-mismatch` when the model's predicted protocol differs from
the expected one (Zeek's service, else the port) while the expected protocol is one the model
knows: a model that never learned "modbus" cannot say a port-502 connection is not Modbus, and an
unknown port expects nothing. The alert's direction is the one with the larger reconstruction
error. Outputs depend only on the record and the model version, so re-scoring a replayed uid
yields the identical alert (scoring is idempotent by uid); within a batch, a uid seen twice is
scored once, with its last record.
"""

from __future__ import annotations

import numpy as np

from headbits.common.protocols import UNKNOWN
from headbits.featurizer.bits import SUPPORTED_N, HeadBatch
from headbits.scorer.backend import Scores

ANOMALOUS_BYTES = "anomalous-bytes"
PROTOCOL_MISMATCH = "protocol-mismatch"
DIRECTIONS = ("orig", "resp")


def last_per_uid(records: list[dict]) -> list[int]:
    """Indices of the last record of each uid, in input order."""
    last = {record["uid"]: index for index, record in enumerate(records)}
    return sorted(last.values())


def check_features(record: dict, model_n: int) -> str | None:
    """Why this feature record cannot be scored by a model of N=`model_n`, or None."""
    n = record["n"]
    if n not in SUPPORTED_N:
        return f"wrong N: n={n} is not one of {SUPPORTED_N}"
    if n < model_n:
        return f"wrong N: n={n} is narrower than the model's N={model_n}"
    if len(record["head_bytes"]) != 2 * n:
        return f"wrong N: head_bytes has {len(record['head_bytes'])} bytes, expected 2n={2 * n}"
    for direction in DIRECTIONS:
        length = record[f"{direction}_length"]
        if not 0 <= length <= n:
            return f"invalid features: {direction}_length={length} is outside 0..{n}"
    return None


def head_batch(records: list[dict], model_n: int) -> HeadBatch:
    """The records' heads at the model's N (records already checked by `check_features`)."""
    rows = [record["head_bytes"][:model_n] + record["head_bytes"][record["n"]:][:model_n]
            for record in records]
    head_bytes = np.frombuffer(b"".join(rows), np.uint8).reshape(len(records), 2 * model_n)
    lengths = np.array([[r["orig_length"], r["resp_length"]] for r in records], np.int32)
    return HeadBatch(head_bytes.copy(), np.minimum(lengths.reshape(-1, 2), model_n))


def alert_reasons(records: list[dict], scores: Scores) -> list[str]:
    """Comma-joined reasons per row, empty for rows that do not alert."""
    anomalous = scores.is_anomalous()
    known = set(scores.model.classes) - {UNKNOWN}
    predicted = scores.predicted_protocols()
    reasons = []
    for row, record in enumerate(records):
        expected = record["expected_protocol"]
        found = [ANOMALOUS_BYTES] if anomalous[row] else []
        if expected in known and predicted[row] != expected:
            found.append(PROTOCOL_MISMATCH)
        reasons.append(",".join(found))
    return reasons


def score_records(
    records: list[dict], batch: HeadBatch, scores: Scores
) -> tuple[list[dict], list[dict]]:
    """(alerts, scores): Alert records (schemas/alert.avsc) and Score records for every row."""
    reasons = alert_reasons(records, scores)
    predicted = scores.predicted_protocols()
    probability = scores.protocol_probs.max(axis=1).tolist() if len(records) else []
    errors = scores.reconstruction_error.tolist()
    thresholds = scores.threshold.tolist()
    direction_errors = scores.direction_error.tolist()
    lengths = batch.head_lengths.tolist()
    n = batch.n
    model = scores.model
    alerts, everything = [], []
    for row, record in enumerate(records):
        orig_error, resp_error = direction_errors[row]
        common = {
            "uid": record["uid"], "ts": record["ts"], "score": errors[row],
            "threshold": thresholds[row], "orig_error": orig_error, "resp_error": resp_error,
            "model_name": model.name, "model_version": model.version,
            "predicted_protocol": predicted[row], "predicted_probability": probability[row],
            "expected_protocol": record["expected_protocol"],
        }
        everything.append({**common, "alert": bool(reasons[row])})
        if not reasons[row]:
            continue
        head = batch.head_bytes[row]
        orig_length, resp_length = lengths[row]
        alerts.append({
            **common,
            "sensor": record["sensor"], "orig_h": record["orig_h"], "orig_p": record["orig_p"],
            "resp_h": record["resp_h"], "resp_p": record["resp_p"],
            "transport": record["transport"], "reason": reasons[row],
            "direction": DIRECTIONS[int(resp_error > orig_error)],
            "model_n": n, "expected_source": record["expected_source"],
            "orig_head": head[:orig_length].tobytes(),
            "resp_head": head[n : n + resp_length].tobytes(),
        })
    return alerts, everything
