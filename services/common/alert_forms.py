"""Alerts in the forms a SIEM reads as-is: ECS JSON, OCSF Detection Finding JSON, plain JSON, and
one line of text for a terminal.

Every form carries the Zeek uid (pivot to conn.log), the Community ID v1 of the 5-tuple (pivot
to Suricata, the SIEM, Zeek's community-id field), the sensor (ECS `observer.name`, OCSF
`device.name`), the model's name and version, the calibrated tail probability (the share of
held-out normal connections at least as novel: what "how bad" means), the evidence in words,
the severity, and both heads as hex and as printable text. ECS follows the Elastic Common Schema
8.11 field reference (custom fields under `headbits.*`, Zeek's uid as `zeek.session_id` as
Elastic's Zeek integration names it); OCSF follows the 1.1.0 Detection Finding class
(class_uid 2004, category Findings), with headbits' own fields under `unmapped`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import orjson

from headbits import __version__

ECS_VERSION = "8.11.0"
OCSF_VERSION = "1.1.0"
SEVERITY_NUMBERS = {"low": 2, "medium": 3, "high": 4, "critical": 5}  # OCSF severity_id
ECS_SEVERITY = {"low": 21, "medium": 47, "high": 73, "critical": 99}  # Elastic's risk bands
PRODUCT = "headbits"


def printable(head: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in head)


def head_forms(head: bytes) -> dict:
    return {"hex": head.hex(), "printable": printable(head), "length": len(head)}


def _iso(seconds: float) -> str:
    millis = round(seconds * 1000)
    whole, fraction = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{fraction:03d}Z"


def _seen(alert: Mapping) -> tuple[float, float]:
    """(first, last) connection start: old records without aggregation fields have ts only."""
    return alert.get("first_seen") or alert["ts"], alert.get("last_seen") or alert["ts"]


def plain(alert: Mapping) -> dict:
    """The Avro record as JSON: bytes as hex, plus the heads' printable forms."""
    record = {key: value.hex() if isinstance(value, bytes) else value
              for key, value in alert.items()}
    record["orig_head_printable"] = printable(alert["orig_head"])
    record["resp_head_printable"] = printable(alert["resp_head"])
    return record


def ecs(alert: Mapping) -> dict:
    first, last = _seen(alert)
    level = alert.get("severity", "medium")
    document = {
        "@timestamp": _iso(alert["ts"]),
        "ecs": {"version": ECS_VERSION},
        "message": alert.get("evidence", ""),
        "event": {
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info", "protocol"],
            "module": PRODUCT,
            "dataset": f"{PRODUCT}.alert",
            "provider": alert["model_name"],
            "severity": ECS_SEVERITY[level],
            "risk_score": round(100.0 * (1.0 - float(alert["tail_probability"])), 3),
            "reason": alert.get("evidence", ""),
            "start": _iso(first),
            "end": _iso(last),
            "id": f"{alert['uid']}/{alert['model_version']}",
        },
        "source": {"ip": alert["orig_h"], "port": alert["orig_p"]},
        "destination": {"ip": alert["resp_h"], "port": alert["resp_p"]},
        "network": {"transport": alert["transport"], "protocol": alert["predicted_protocol"],
                    "community_id": alert.get("community_id", "")},
        "observer": {"name": alert["sensor"], "type": "sensor", "product": "zeek"},
        "rule": {"name": alert["reason"], "ruleset": PRODUCT,
                 "version": str(alert["model_version"])},
        "zeek": {"session_id": alert["uid"]},
        "headbits": {
            "uid": alert["uid"], "reason": alert["reason"].split(","), "severity": level,
            "model": {"name": alert["model_name"], "version": alert["model_version"],
                      "n": alert["model_n"]},
            "tail_probability": alert["tail_probability"], "score": alert["score"],
            "threshold": alert["threshold"], "direction": alert["direction"],
            "predicted_protocol": alert["predicted_protocol"],
            "predicted_probability": alert["predicted_probability"],
            "expected_protocol": alert["expected_protocol"],
            "expected_source": alert["expected_source"],
            "deviating_offsets": list(alert.get("deviating_offsets", [])),
            "count": alert.get("count", 1), "uids": list(alert.get("uids", [])) or [alert["uid"]],
            "learning": alert.get("learning", False),
            "orig_head": head_forms(alert["orig_head"]),
            "resp_head": head_forms(alert["resp_head"]),
        },
    }
    if alert.get("learning"):
        document["tags"] = ["learning"]
    return document


def ocsf(alert: Mapping) -> dict:
    first, last = _seen(alert)
    level = alert.get("severity", "medium")

    def millis(seconds: float) -> int:
        return round(seconds * 1000)

    return {
        "class_uid": 2004, "class_name": "Detection Finding",
        "category_uid": 2, "category_name": "Findings",
        "activity_id": 1, "activity_name": "Create",
        "type_uid": 200401, "type_name": "Detection Finding: Create",
        "time": millis(alert["ts"]),
        "start_time": millis(first), "end_time": millis(last),
        "count": alert.get("count", 1),
        "severity_id": SEVERITY_NUMBERS[level], "severity": level.capitalize(),
        "status_id": 1, "status": "New",
        "message": alert.get("evidence", ""),
        "metadata": {
            "version": OCSF_VERSION, "uid": f"{alert['uid']}/{alert['model_version']}",
            "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": __version__},
            "labels": ["learning"] if alert.get("learning") else [],
        },
        "finding_info": {
            "uid": f"{alert['uid']}/{alert['model_version']}",
            "title": alert.get("evidence", "") or alert["reason"],
            "types": alert["reason"].split(","),
            "first_seen_time": millis(first), "last_seen_time": millis(last),
            "analytic": {"name": alert["model_name"], "uid": str(alert["model_version"]),
                         "type_id": 4, "type": "Learning (ML/DL)",
                         "version": str(alert["model_version"])},
        },
        "device": {"name": alert["sensor"], "type_id": 99, "type": "Zeek sensor"},
        "evidences": [{
            "src_endpoint": {"ip": alert["orig_h"], "port": alert["orig_p"]},
            "dst_endpoint": {"ip": alert["resp_h"], "port": alert["resp_p"]},
            "connection_info": {"protocol_name": alert["transport"],
                                "community_uid": alert.get("community_id", ""),
                                "uid": alert["uid"]},
            "data": {"orig_head": head_forms(alert["orig_head"]),
                     "resp_head": head_forms(alert["resp_head"])},
        }],
        "unmapped": {
            "zeek_uid": alert["uid"], "uids": list(alert.get("uids", [])) or [alert["uid"]],
            "model_version": alert["model_version"], "model_n": alert["model_n"],
            "tail_probability": alert["tail_probability"], "score": alert["score"],
            "threshold": alert["threshold"], "direction": alert["direction"],
            "predicted_protocol": alert["predicted_protocol"],
            "expected_protocol": alert["expected_protocol"],
            "expected_source": alert["expected_source"], "learning": alert.get("learning", False),
        },
    }


def table(alert: Mapping) -> str:
    """One line for a terminal: when, severity, uid, flow, evidence, model, tail probability."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(alert["ts"]))
    count = alert.get("count", 1)
    tags = " [learning]" if alert.get("learning") else ""
    seen = f" x{count}" if count > 1 else ""
    head = alert[f"{alert['direction']}_head"][:32]
    return (
        f"{when} {alert.get('severity', 'medium').upper():8} {alert['uid']}{seen}{tags} "
        f"{alert['transport']} {alert['orig_h']}:{alert['orig_p']} -> "
        f"{alert['resp_h']}:{alert['resp_p']} [{alert['reason']}] "
        f"{alert.get('evidence', '')} | tail p {alert['tail_probability']:.2g} "
        f"model {alert['model_name']}/{alert['model_version']} "
        f"{alert['direction']} head {printable(head)!r} {head.hex()}"
    )


FORMS: dict[str, Callable[[Mapping], dict]] = {"ecs": ecs, "ocsf": ocsf, "json": plain}


def to_json(document: dict) -> bytes:
    return orjson.dumps(document)
