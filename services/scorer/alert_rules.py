"""Feature records + model Scores -> alerts and score records: the scorer's pure part.

A connection alerts for `novel-protocol` when its opening bytes fit none of the traffic the
model learned, whatever its port or service: the model's calibrated tail probability (the share
of held-out normal connections at least as novel) is at or below the configured alert rate. It
alerts for `anomalous-bytes` when its reconstruction error is above the model's threshold for its
predicted class, and for `protocol-mismatch` when the predicted protocol differs from the
expected one (Zeek's service, else the port) while the expected protocol is one the model knows:
a model that never learned "modbus" cannot say a port-502 connection is not Modbus, and an
unknown port expects nothing.

A head whose stream start was not seen (a gap flag) cannot be judged by its opening bytes: it is
scored and marked `midstream`, and alerts only when the rule says so (`alert_midstream`).

The alert's direction is the one with the larger reconstruction error, and it names that
direction's byte offsets with the largest per-bit error. Outputs depend only on the record, the
model version and the rule, so re-scoring a replayed uid yields the identical alert (scoring is
idempotent by uid); within a batch, a uid seen twice is scored once, with its last record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headbits.common.columnar import binary_matrix, table_of
from headbits.common.protocols import UNKNOWN
from headbits.featurizer.bits import SUPPORTED_N, HeadBatch
from headbits.scorer.backend import Scores

NOVEL_PROTOCOL = "novel-protocol"
ANOMALOUS_BYTES = "anomalous-bytes"
PROTOCOL_MISMATCH = "protocol-mismatch"
DIRECTIONS = ("orig", "resp")


@dataclass(frozen=True, slots=True)
class AlertRule:
    """The operator's side of the rule: the model's response decides everything else.

    `alert_rate` is the tail probability at or below which a connection is a novel protocol: on
    normal traffic like the held-out captures it was calibrated on, about that share alerts.
    `alert_midstream` lets heads whose start was not seen alert too.
    """

    alert_rate: float = 0.001
    alert_midstream: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.alert_rate < 1.0:
            raise ValueError(f"alert rate {self.alert_rate} is not in (0, 1)")


DEFAULT_RULE = AlertRule()


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
    count = len(records)
    lengths = np.empty((count, 2), np.int32)
    lengths[:, 0] = np.fromiter((r["orig_length"] for r in records), np.int32, count)
    lengths[:, 1] = np.fromiter((r["resp_length"] for r in records), np.int32, count)
    widths = {record["n"] for record in records}
    if len(widths) == 1:  # the usual case: the whole batch is one reshape
        n = widths.pop()
        packed = np.frombuffer(b"".join(r["head_bytes"] for r in records), np.uint8)
        return HeadBatch(packed.reshape(count, 2 * n).copy(), lengths).truncate(model_n)
    rows = [record["head_bytes"][:model_n] + record["head_bytes"][record["n"]:][:model_n]
            for record in records]
    head_bytes = np.frombuffer(b"".join(rows), np.uint8).reshape(count, 2 * model_n)
    return HeadBatch(head_bytes.copy(), np.minimum(lengths, model_n))


@dataclass(frozen=True, slots=True)
class Verdicts:
    """Why each row of a scored batch alerts, as boolean columns (numpy, no per-row Python).

    `novel`, `anomalous` and `mismatch` are what the model says of each row; `alerting` applies
    the rule's treatment of `midstream` rows on top.
    """

    novel: np.ndarray
    anomalous: np.ndarray
    mismatch: np.ndarray
    midstream: np.ndarray
    alert_midstream: bool = False

    @classmethod
    def of(cls, records: Sequence[dict], scores: Scores, rule: AlertRule = DEFAULT_RULE
           ) -> Verdicts:
        count = len(records)
        midstream = np.fromiter((record["orig_gap"] or record["resp_gap"] for record in records),
                                bool, count)
        return cls.of_columns(pa.array([record["expected_protocol"] for record in records],
                                       pa.string()), midstream, scores, rule)

    @classmethod
    def of_columns(cls, expected_protocols: pa.Array | pa.ChunkedArray, midstream: np.ndarray,
                   scores: Scores, rule: AlertRule = DEFAULT_RULE) -> Verdicts:
        """The same from columns: each row's expected protocol and midstream flag."""
        classes = [name if name != UNKNOWN else None for name in scores.model.classes]
        expected = pc.fill_null(pc.index_in(expected_protocols, value_set=pa.array(
            [name for name in classes if name is not None], pa.string())), -1).to_numpy()
        known = np.array([index for index, name in enumerate(classes) if name is not None]
                         + [-1], np.int64)
        expected = known[expected]  # position among the known classes -> class index
        predicted = np.argmax(scores.protocol_probs, axis=1)
        return cls(scores.tail_probability <= rule.alert_rate, scores.is_anomalous(),
                   (expected >= 0) & (predicted != expected), np.asarray(midstream, bool),
                   rule.alert_midstream)

    @property
    def alerting(self) -> np.ndarray:
        """bool per row: the row alerts for at least one reason (midstream rows only if allowed)."""
        flagged = self.novel | self.anomalous | self.mismatch
        return flagged if self.alert_midstream else flagged & ~self.midstream

    def alerting_rows(self) -> np.ndarray:
        return np.flatnonzero(self.alerting)

    def reason(self, row: int) -> str:
        """Comma-joined reasons of one row, empty when it does not alert."""
        if not self.alerting[row]:
            return ""
        found = [name for name, column in ((NOVEL_PROTOCOL, self.novel),
                                           (ANOMALOUS_BYTES, self.anomalous),
                                           (PROTOCOL_MISMATCH, self.mismatch)) if column[row]]
        return ",".join(found)


def score_dicts(
    records: list[dict], scores: Scores, verdicts: Verdicts, rows: np.ndarray | None = None
) -> list[dict]:
    """Score records (schemas/score.avsc) of `rows` (all when None), built from whole columns."""
    if rows is None:
        rows = np.arange(len(records))
    model = scores.model
    predicted = np.argmax(scores.protocol_probs[rows], axis=1).tolist()
    columns = zip(
        rows.tolist(), scores.reconstruction_error[rows].tolist(),
        scores.threshold[rows].tolist(), scores.direction_error[rows].tolist(),
        [model.classes[index] for index in predicted],
        scores.protocol_probs[rows].max(axis=1).tolist(),
        scores.novelty_score[rows].tolist(), scores.tail_probability[rows].tolist(),
        verdicts.midstream[rows].tolist(), verdicts.alerting[rows].tolist(), strict=True,
    )
    return [
        {
            "uid": records[row]["uid"], "ts": records[row]["ts"], "score": error,
            "threshold": threshold, "orig_error": orig_error, "resp_error": resp_error,
            "model_name": model.name, "model_version": model.version,
            "predicted_protocol": protocol, "predicted_probability": probability,
            "expected_protocol": records[row]["expected_protocol"], "alert": alert,
            "novelty_score": novelty, "tail_probability": tail, "midstream": midstream,
            "reason": verdicts.reason(row),
        }
        for (row, error, threshold, (orig_error, resp_error), protocol, probability, novelty,
             tail, midstream, alert) in columns
    ]


def alert_records(
    records: list[dict], batch: HeadBatch, scores: Scores, verdicts: Verdicts
) -> list[dict]:
    """Alert records (schemas/alert.avsc) of the alerting rows only."""
    rows = verdicts.alerting_rows()
    n = batch.n
    alerts = []
    for row, score in zip(rows.tolist(), score_dicts(records, scores, verdicts, rows), strict=True):
        record = records[row]
        del score["alert"]
        lengths = batch.head_lengths[row].tolist()
        head = batch.head_bytes[row]
        direction = int(score["resp_error"] > score["orig_error"])
        alerts.append({
            **score,
            "sensor": record["sensor"], "orig_h": record["orig_h"], "orig_p": record["orig_p"],
            "resp_h": record["resp_h"], "resp_p": record["resp_p"],
            "transport": record["transport"], "direction": DIRECTIONS[direction],
            "deviating_offsets": deviating_offsets(scores.top_bytes[row, direction],
                                                   lengths[direction]),
            "model_n": n, "expected_source": record["expected_source"],
            "orig_head": head[:lengths[0]].tobytes(),
            "resp_head": head[n : n + lengths[1]].tobytes(),
        })
    return alerts


def deviating_offsets(top_bytes: np.ndarray, length: int) -> list[int]:
    """The model's worst byte offsets of one direction, worst first, among the bytes present
    (offsets past the head's length carry no error and are not evidence)."""
    return [offset for offset in top_bytes.tolist() if offset < length]


def score_records(
    records: list[dict], batch: HeadBatch, scores: Scores, rule: AlertRule = DEFAULT_RULE
) -> tuple[list[dict], list[dict]]:
    """(alerts, scores): Alert records (schemas/alert.avsc) and Score records for every row."""
    verdicts = Verdicts.of(records, scores, rule)
    return alert_records(records, batch, scores, verdicts), score_dicts(records, scores, verdicts)


# The .v2 path: the same decisions on a decoded Features table, column by column -------------

class TableRows(Sequence):
    """Rows of a table as records, built only when read: the alert path reads the few alerting
    rows by index, so the other rows never become Python dicts."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table
        self._built: dict[int, dict] = {}

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, row: int) -> dict:  # type: ignore[override]
        if row not in self._built:
            self._built[row] = self._table.slice(row, 1).to_pylist()[0]
        return self._built[row]


def last_per_uid_rows(table: pa.Table) -> np.ndarray:
    """Row indices of the last row of each uid, in input order (as `last_per_uid`)."""
    if table.num_rows == 0:
        return np.zeros(0, np.int64)
    indexed = pa.table({"uid": table.column("uid"), "row": np.arange(table.num_rows)})
    last = indexed.group_by("uid", use_threads=False).aggregate([("row", "max")])
    return np.sort(last.column("row_max").to_numpy())


def check_features_table(table: pa.Table, model_n: int) -> list[tuple[int, str]]:
    """(row, reason) of every row `check_features` refuses, worded as it words them."""
    n = table.column("n").to_numpy()
    width = pc.binary_length(table.column("head_bytes")).to_numpy()
    ok = np.isin(n, SUPPORTED_N) & (n >= model_n) & (width == 2 * n)
    for direction in DIRECTIONS:
        length = table.column(f"{direction}_length").to_numpy()
        ok &= (length >= 0) & (length <= n)
    bad = np.flatnonzero(~ok).tolist()
    rows = TableRows(table)
    return [(row, check_features(rows[row], model_n)) for row in bad]


def head_batch_table(table: pa.Table, model_n: int) -> HeadBatch:
    """The heads of a checked Features table at the model's N: one reshape of the column's
    buffer when every row has the same n (the topic's 64), else row by row."""
    lengths = np.stack([table.column("orig_length").to_numpy(),
                        table.column("resp_length").to_numpy()], axis=1).astype(np.int32)
    n = table.column("n").to_numpy()
    if len(n) and np.all(n == n[0]):
        packed = binary_matrix(table.column("head_bytes"), 2 * int(n[0]))
        if packed is not None:
            return HeadBatch(packed.copy(), lengths).truncate(model_n)
    return head_batch(list(TableRows(table)), model_n)


def verdicts_of_table(table: pa.Table, scores: Scores, rule: AlertRule = DEFAULT_RULE
                      ) -> Verdicts:
    midstream = pc.or_(table.column("orig_gap"), table.column("resp_gap")).to_numpy()
    return Verdicts.of_columns(table.column("expected_protocol"), midstream, scores, rule)


def reasons(verdicts: Verdicts) -> np.ndarray:
    """object [rows]: each row's comma-joined reasons (empty when it does not alert), built
    per distinct combination rather than per row."""
    alerting = verdicts.alerting
    codes = (verdicts.novel * 1 + verdicts.anomalous * 2 + verdicts.mismatch * 4) * alerting
    names = []
    for code in range(8):
        names.append(",".join(name for bit, name in ((1, NOVEL_PROTOCOL), (2, ANOMALOUS_BYTES),
                                                     (4, PROTOCOL_MISMATCH)) if code & bit))
    return np.array(names, dtype=object)[codes]


def score_table(table: pa.Table, scores: Scores, verdicts: Verdicts) -> pa.Table:
    """The Score table (schemas/score.avsc) of every row, built from whole columns; a Score
    field this does not compute takes its schema default."""
    model = scores.model
    rows = table.num_rows
    predicted = np.argmax(scores.protocol_probs, axis=1) if rows else np.zeros(0, np.int64)
    classes = pa.array(list(model.classes), pa.string())
    return table_of("score", {
        "uid": table.column("uid"), "ts": table.column("ts"),
        "score": scores.reconstruction_error, "threshold": scores.threshold,
        "orig_error": scores.direction_error[:, 0], "resp_error": scores.direction_error[:, 1],
        "model_name": pa.array([model.name] * rows, pa.string()),
        "model_version": np.full(rows, model.version, np.int64),
        "predicted_protocol": classes.take(pa.array(predicted)),
        "predicted_probability": (scores.protocol_probs.max(axis=1) if rows
                                  else np.zeros(0, np.float32)),
        "expected_protocol": table.column("expected_protocol"),
        "alert": verdicts.alerting, "novelty_score": scores.novelty_score,
        "tail_probability": scores.tail_probability, "midstream": verdicts.midstream,
        "reason": pa.array(reasons(verdicts).tolist(), pa.string()),
    }, rows)
