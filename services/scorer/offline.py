"""Score captures offline with a model version, most anomalous connections first.

Reads each capture (pcap or pcapng), takes Zeek's service from a `<capture stem>.conn.log` beside
it when there is one (the port map otherwise), and scores every connection with the same code the
scorer service runs on Kafka: the same feature records, the same alert rules, the same model. A
connection alerts as the scorer's rule says (`novel-protocol`, `anomalous-bytes`,
`protocol-mismatch`; see `alert_rules.py`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from headbits.common.records import PayloadHead
from headbits.featurizer.transform import feature_records
from headbits.scorer.alert_rules import head_batch, score_records
from headbits.scorer.backend import ScoringBackend


def score_heads(heads: Sequence[PayloadHead], backend: ScoringBackend) -> list[dict]:
    """Score records (with the alert's reason, empty when none), most anomalous first.

    Rows rank by their calibrated tail probability (most novel first), ties by error relative
    to its threshold, so rows of classes with different thresholds compare fairly.
    """
    records = feature_records(list(heads))
    if not records:
        return []
    batch = head_batch(records, backend.info().n)
    alerts, scores = score_records(records, batch, backend.score(batch))
    by_uid = {alert["uid"]: alert for alert in alerts}
    rows = []
    for record, score in zip(records, scores, strict=True):
        alert = by_uid.get(record["uid"], {})
        rows.append({
            **{key: record[key] for key in ("uid", "ts", "sensor", "orig_h", "orig_p", "resp_h",
                                            "resp_p", "transport", "expected_source")},
            **score,
            "reason": alert.get("reason", ""),
            "direction": alert.get("direction", ""),
        })
    rows.sort(key=lambda row: (row["tail_probability"],
                               -row["score"] / max(row["threshold"], 1e-12)))
    return rows


def read_labelled_heads(captures: Sequence[Path]) -> tuple[list[PayloadHead], list[str]]:
    """Heads of every capture, with Zeek's services where a conn.log sits beside the capture."""
    from headbits.collector.labels import label_from_conn_log_beside
    from headbits.collector.pcap import read_capture

    heads: list[PayloadHead] = []
    errors: list[str] = []
    for path in captures:
        result = read_capture(path, n=64)
        errors += result.errors
        heads += label_from_conn_log_beside(path, result.heads)
    return heads, errors


def format_table(rows: Sequence[dict], limit: int) -> str:
    header = (f"{'uid':<19} {'connection':<47} {'score':>8} {'thresh':>8} "
              f"{'predicted':<11} {'expected':<15} reason")
    lines = [header, "-" * len(header)]
    for row in rows[:limit]:
        connection = (f"{row['orig_h']}:{row['orig_p']} > {row['resp_h']}:{row['resp_p']}"
                      f"/{row['transport']}")
        expected = f"{row['expected_protocol']} ({row['expected_source']})"
        lines.append(f"{row['uid']:<19} {connection:<47.47} {row['score']:>8.4f} "
                     f"{row['threshold']:>8.4f} {row['predicted_protocol']:<11.11} "
                     f"{expected:<15.15} {row['reason']}")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("captures", type=Path, nargs="+", metavar="CAPTURE",
                        help="pcap or pcapng files")
    parser.add_argument("--model", type=Path, default=Path("models"),
                        help="a version directory, or a model base directory whose latest "
                             "version is used (default: models)")
    parser.add_argument("--top", type=int, default=20, help="rows in the table (default: 20)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per connection, most anomalous first")


def run(args: argparse.Namespace) -> int:
    from headbits.common.model_repository import resolve_version_dir
    from headbits.scorer.inprocess import SavedModelBackend

    try:
        backend = SavedModelBackend(resolve_version_dir(args.model))
    except FileNotFoundError as error:
        print(f"headbits score: {error} (train one with `headbits train`)", file=sys.stderr)
        return 1
    heads, errors = read_labelled_heads(args.captures)
    for error in errors:
        print(f"warning: {error}", file=sys.stderr)
    rows = score_heads(heads, backend)
    if args.json:
        out = sys.stdout.buffer
        for row in rows:
            out.write(orjson.dumps(row) + b"\n")
        out.flush()
    else:
        model = backend.info()
        alerting = sum(1 for row in rows if row["reason"])
        print(f"model {model.name} v{model.version} (N={model.n}): {len(rows)} connections, "
              f"{alerting} alerts")
        print(format_table(rows, args.top))
    backend.close()
    return 0
