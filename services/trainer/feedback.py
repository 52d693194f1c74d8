"""Analysts' verdicts as training labels: benign feedback is labelled normal traffic.

The feedback topic (schemas/feedback.avsc, written by `headbits alerts mark` or a SIEM/SOAR)
says of an alerted connection that it is benign, and what protocol it really is, or that it is
malicious. When the trainer reads its window, a feature record whose uid has a verdict (the
latest one counts) is relabelled before screening: benign rows teach as their analyst label
(with the authority of a parser's: a person looked at it), even when only the port labelled
them before; malicious rows are left out, even when a parser confirmed their protocol (an
attack that speaks HTTP is not the HTTP to learn). Both are counted in the window's figures, so
the version's headbits.json says how much feedback it learned from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from headbits.common.kafka import KafkaConnection
from headbits.common.topic_window import decoded_since
from headbits.trainer.window import PARSER_CONFIRMED, WindowCounts


@dataclass
class Verdicts:
    """uid -> the latest verdict record of that uid."""

    by_uid: dict[str, dict] = field(default_factory=dict)
    skipped: int = 0

    def add(self, records: Iterable[dict]) -> None:
        for record in records:
            known = self.by_uid.get(record["uid"])
            if known is None or record["ts"] >= known["ts"]:
                self.by_uid[record["uid"]] = record

    def apply(self, records: list[dict], counts: WindowCounts) -> list[dict]:
        """The records with verdicts applied (benign relabelled, malicious dropped), counted."""
        if not self.by_uid:
            return records
        kept = []
        for record in records:
            verdict = self.by_uid.get(record["uid"])
            if verdict is None:
                kept.append(record)
            elif verdict["verdict"] == "benign":
                counts.feedback_benign += 1
                label = verdict["protocol"] or verdict["predicted_protocol"]
                kept.append({**record, "expected_protocol": label,
                             "expected_source": PARSER_CONFIRMED})
            else:
                counts.feedback_malicious += 1
        return kept


def read_verdicts(settings: KafkaConnection, topic: str, since: float) -> Verdicts:
    """Every verdict given since `since` (epoch seconds): verdicts come after the connection."""
    verdicts = Verdicts()
    skipped = [0]
    for batch in decoded_since(settings, topic, "feedback", since, skipped=skipped):
        verdicts.add(batch)
    verdicts.skipped = skipped[0]
    return verdicts
