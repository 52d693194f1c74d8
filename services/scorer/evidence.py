"""What an alert says to a person: the evidence in words, and a severity from a per-protocol table.

"SSH on 443/tcp" is a finding an analyst can act on; "novel-protocol, score 0.41" is not. The
words are built only from the alert's own fields (reason, predicted and expected protocol, port,
the head bytes and the offsets the model found deviating), so they are as deterministic as the
alert. Severity depends on what was seen: SSH or RDP off their ports matters more than HTTP on
port 1234, so it comes from a table keyed by the predicted protocol, with `novel` for a protocol
the model never learned and `anomalous` for known-protocol bytes that look unusual; the highest of
an alert's reasons wins.
"""

from __future__ import annotations

from collections.abc import Mapping

from headbits.common.protocols import UNKNOWN

SEVERITIES = ("low", "medium", "high", "critical")
DEFAULT_SEVERITY_TABLE = (
    "novel=high,anomalous=low,ssh=high,rdp=high,telnet=high,vnc=high,smb=high,"
    "dcerpc=high,modbus=high,*=medium"
)
FIRST_BYTES = 8


def parse_severity_table(text: str) -> dict[str, str]:
    """`protocol=severity,...` (`*` the default, `novel` and `anomalous` the two model reasons) as
    a dict; ValueError naming the entry that is not one."""
    table: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        key, sep, level = entry.partition("=")
        if not sep or not key.strip() or level.strip() not in SEVERITIES:
            raise ValueError(f"severity table entry {entry!r} is not protocol=one of {SEVERITIES}")
        table[key.strip().lower()] = level.strip()
    table.setdefault("*", "medium")
    return table


def severity(alert: Mapping, table: Mapping[str, str]) -> str:
    """The highest level the table gives any of the alert's reasons."""
    default = table["*"]
    reasons = alert["reason"].split(",")
    levels = []
    if "novel-protocol" in reasons:
        levels.append(table.get("novel", default))
    if "protocol-mismatch" in reasons:
        levels.append(table.get(alert["predicted_protocol"], default))
    if "anomalous-bytes" in reasons:
        levels.append(table.get("anomalous", table.get(alert["predicted_protocol"], default)))
    return max(levels or [default], key=SEVERITIES.index)


def printable(head: bytes) -> str:
    """The bytes as text where they are printable ASCII, `.` elsewhere (the hexdump column)."""
    return "".join(chr(b) if 32 <= b < 127 else "." for b in head)


def looks_textual(head: bytes) -> bool:
    """Most of the first bytes are printable ASCII or line breaks: a text protocol."""
    cut = head[:16]
    return bool(cut) and sum(32 <= b < 127 or b in (9, 10, 13) for b in cut) >= 0.9 * len(cut)


def first_bytes(head: bytes) -> str:
    if not head:
        return "no payload"
    shown = " ".join(f"{b:02x}" for b in head[:FIRST_BYTES])
    more = " ..." if len(head) > FIRST_BYTES else ""
    if looks_textual(head):
        return f"first bytes {printable(head[:16])!r}{' ...' if len(head) > 16 else ''}"
    return f"first bytes {shown}{more}"


def evidence(alert: Mapping) -> str:
    """What was seen, in words: one clause per reason, joined by "; "."""
    port = f"{alert['resp_p']}/{alert['transport']}"
    predicted = alert["predicted_protocol"]
    head = alert[f"{alert['direction']}_head"] or alert["orig_head"] or alert["resp_head"]
    reasons = alert["reason"].split(",")
    clauses = []
    if "novel-protocol" in reasons:
        kind = "text" if looks_textual(head) else "binary"
        clauses.append(f"unknown {kind} protocol on {port}, {first_bytes(head)}")
    if "protocol-mismatch" in reasons:
        name = predicted.upper() if predicted != UNKNOWN else "an unknown protocol"
        clauses.append(f"{name} on {port} (expected {alert['expected_protocol']} by "
                       f"{alert['expected_source']})")
    if "anomalous-bytes" in reasons:
        offsets = ", ".join(map(str, alert.get("deviating_offsets", [])[:4])) or "none"
        clauses.append(f"{predicted} on {port} with unusual bytes in the {alert['direction']} "
                       f"head (offsets {offsets})")
    return "; ".join(clauses)
