"""Suppression (allow-list) rules and sensors' learning mode: the pure part, no Kafka.

A rule is a Rule record (schemas/rule.avsc) kept in the compacted topic headbits.rules.v1 under
its id; every scorer replica reads the whole topic and keeps following it (`rule_feed`), so all
replicas apply the same set, and a rule added or removed takes effect at the next batch, without
a restart. An alert is suppressed by the first unexpired rule all of whose set fields match it
(empty strings and port -1 match anything; CIDRs match the address; `reason` matches an alert
whose reasons include it). Benign analyst feedback (schemas/feedback.avsc) becomes a rule too,
derived the same way on every replica: the flow's pattern (sensor, responder address, port,
transport, expected and predicted protocol), expiring `suppress_days` after the verdict.

Records of kind `learning` are not rules: `learning/<sensor>` says when that sensor's learning
mode (re)started (`learning.LearningMode`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

SUPPRESS = "suppress"
LEARNING = "learning"
REASONS = ("novel-protocol", "anomalous-bytes", "protocol-mismatch")
DAY_SECONDS = 86400.0


class InvalidRule(ValueError):
    """A rule record that cannot be applied; the message names the field."""


@dataclass(frozen=True)
class Rule:
    """One suppression rule (the fields of schemas/rule.avsc)."""

    id: str
    kind: str = SUPPRESS
    sensor: str = ""
    src_cidr: str = ""
    dst_cidr: str = ""
    resp_p: int = -1
    transport: str = ""
    expected_protocol: str = ""
    predicted_protocol: str = ""
    reason: str = ""
    expires: float = 0.0
    created: float = 0.0
    author: str = ""
    comment: str = ""
    origin: str = "cli"

    def __post_init__(self) -> None:
        if not self.id:
            raise InvalidRule("id is empty")
        if self.kind not in (SUPPRESS, LEARNING):
            raise InvalidRule(f"kind {self.kind!r} is not {SUPPRESS} or {LEARNING}")
        if self.reason and self.reason not in REASONS:
            raise InvalidRule(f"reason {self.reason!r} is not one of {REASONS}")
        if not -1 <= self.resp_p <= 65535:
            raise InvalidRule(f"resp_p={self.resp_p} is outside -1..65535")
        if self.transport not in ("", "tcp", "udp"):
            raise InvalidRule(f"transport {self.transport!r} is not tcp or udp")
        for name in ("src_cidr", "dst_cidr"):
            value = getattr(self, name)
            if value:
                try:
                    ipaddress.ip_network(value, strict=False)
                except ValueError as error:
                    raise InvalidRule(f"{name} {value!r}: {error}") from error

    @classmethod
    def from_record(cls, record: Mapping) -> Rule:
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in names})

    def to_record(self) -> dict:
        return dataclasses.asdict(self)

    @cached_property
    def _networks(self) -> tuple:
        return tuple(ipaddress.ip_network(value, strict=False) if value else None
                     for value in (self.src_cidr, self.dst_cidr))

    def active(self, now: float) -> bool:
        return self.kind == SUPPRESS and (not self.expires or now < self.expires)

    def matches(self, alert: Mapping, addresses: tuple | None = None) -> bool:
        """Every set field of the rule matches the alert (expiry is `active`'s business);
        `addresses`: the alert's (orig_h, resp_h) parsed by `addresses_of`, once per alert."""
        if self.sensor and alert["sensor"] != self.sensor:
            return False
        if self.resp_p >= 0 and alert["resp_p"] != self.resp_p:
            return False
        if self.transport and alert["transport"] != self.transport:
            return False
        if self.expected_protocol and alert["expected_protocol"] != self.expected_protocol:
            return False
        if self.predicted_protocol and alert["predicted_protocol"] != self.predicted_protocol:
            return False
        if self.reason and self.reason not in alert["reason"].split(","):
            return False
        if self.src_cidr or self.dst_cidr:
            for network, address in zip(self._networks, addresses or addresses_of(alert),
                                        strict=True):
                if network is not None and (address is None or address not in network):
                    return False
        return True


def addresses_of(alert: Mapping) -> tuple:
    """The alert's (orig_h, resp_h) as ip_address objects; None for one that is not an address
    (no CIDR matches it)."""
    parsed = []
    for text in (alert["orig_h"], alert["resp_h"]):
        try:
            parsed.append(ipaddress.ip_address(text))
        except ValueError:
            parsed.append(None)
    return tuple(parsed)


def feedback_rule(feedback: Mapping) -> Rule | None:
    """The suppression rule benign feedback implies for the alert's flow pattern, or None
    (malicious feedback, or a verdict asking for no rule)."""
    if feedback["verdict"] != "benign" or feedback.get("suppress_days", 0.0) <= 0:
        return None
    resp_h = feedback.get("resp_h", "")
    return Rule(
        id=f"feedback/{feedback['uid']}", sensor=feedback.get("sensor", ""),
        dst_cidr=resp_h, resp_p=feedback.get("resp_p", -1),
        transport=feedback.get("transport", ""),
        expected_protocol=feedback.get("expected_protocol", ""),
        predicted_protocol=feedback.get("predicted_protocol", ""),
        expires=feedback["ts"] + feedback["suppress_days"] * DAY_SECONDS,
        created=feedback["ts"], author=feedback["author"],
        comment=f"benign feedback on {feedback['uid']}: {feedback.get('comment', '')}".rstrip(": "),
        origin="feedback",
    )


class RuleSet:
    """The rules in force, by id: what the topic (and the chart's static rules) say now."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules: dict[str, Rule] = {}
        self._ordered: list[Rule] | None = []
        self.learning_started: dict[str, float] = {}
        for rule in rules:
            self.put(rule)

    def put(self, rule: Rule) -> None:
        if rule.kind == LEARNING:
            self.learning_started[rule.sensor] = rule.created
        else:
            self._rules[rule.id] = rule
            self._ordered = None

    def remove(self, rule_id: str) -> None:
        if self._rules.pop(rule_id, None) is not None:
            self._ordered = None
        if rule_id.startswith(f"{LEARNING}/"):
            self.learning_started.pop(rule_id.removeprefix(f"{LEARNING}/"), None)

    def rules(self) -> list[Rule]:
        """The rules by id (sorted once per change, not per alert)."""
        if self._ordered is None:
            self._ordered = sorted(self._rules.values(), key=lambda rule: rule.id)
        return self._ordered

    def __len__(self) -> int:
        return len(self._rules)

    def match(self, alert: Mapping, now: float) -> Rule | None:
        """The first (by id) active rule matching the alert, or None."""
        rules = self.rules()
        if not rules:
            return None
        addresses = addresses_of(alert)
        for rule in rules:
            if rule.active(now) and rule.matches(alert, addresses):
                return rule
        return None
