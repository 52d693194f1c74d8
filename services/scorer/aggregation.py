"""Aggregation: alerts of one pattern within a window collapse into one alert with a count.

A scan or a misconfigured service makes thousands of identical alerts; an analyst needs one, with
how many connections it stands for and when they were first and last seen. Alerts with the same
(sensor, source, destination, responder port, reason, predicted protocol) seen within
`window_seconds` of the first one are one aggregated alert: the first alert's fields, `count`,
`first_seen`/`last_seen` (connection times) and the first `keep_uids` uids. It is emitted when the
window ends (at the first batch after its end) or as soon as `count_threshold` connections were
seen, whichever comes first; the next alert of the pattern opens a new window. Per-connection
Score records are not aggregated: every connection keeps its own.

State is bounded: at most `max_open` windows; a new pattern beyond that emits the window that
ends first, early (counted), rather than dropping anything.

Restarts: every change of a window is written, as an AlertWindow record, to a compacted topic in
the same batch as the outputs, so it is acknowledged before the batch's input offsets are stored.
A restarted scorer restores its open windows from that topic (key `<scorer_id>/<group>`) and goes
on counting; a crash between a window's alert and its closing record re-emits that alert once
(at-least-once), and never loses one. A window whose owner went away (another scorer id, open
past its end by `window_seconds` more) is adopted: emitted by whichever replica sees it first.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import fastavro

from headbits.common.avro import load_schema

GROUP_FIELDS = ("sensor", "orig_h", "resp_h", "resp_p", "reason", "predicted_protocol")


def group_of(alert: Mapping) -> str:
    return "|".join(str(alert[name]) for name in GROUP_FIELDS)


def single(alert: dict) -> dict:
    """An alert as an aggregate of one connection (what is written without aggregation)."""
    return {**alert, "count": 1, "first_seen": alert["ts"], "last_seen": alert["ts"],
            "uids": [alert["uid"]]}


def encode_alert(alert: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, load_schema("alert"), alert)
    return out.getvalue()


def decode_alert(value: bytes) -> dict:
    return fastavro.schemaless_reader(io.BytesIO(value), load_schema("alert"), None)


@dataclass
class Window:
    alert: dict
    end: float


@dataclass
class Aggregated:
    """What one call made of the alerts: the alerts to write now, and the window records."""

    alerts: list[dict]
    states: list[dict]
    early: int = 0


class AlertWindows:
    def __init__(self, scorer_id: str, window_seconds: float, count_threshold: int = 0,
                 max_open: int = 10000, keep_uids: int = 10,
                 clock: Callable[[], float] = time.time) -> None:
        if window_seconds < 0 or count_threshold < 0 or max_open < 1 or keep_uids < 1:
            raise ValueError("aggregation: window, threshold not negative; max_open, "
                             "keep_uids at least 1")
        self.scorer_id = scorer_id
        self.window_seconds = window_seconds
        self.count_threshold = count_threshold
        self.max_open = max_open
        self.keep_uids = keep_uids
        self._clock = clock
        self._open: dict[str, Window] = {}
        self._others: dict[str, tuple[float, dict]] = {}  # key -> (end, record) of other scorers

    @property
    def enabled(self) -> bool:
        return self.window_seconds > 0

    def __len__(self) -> int:
        return len(self._open)

    def add(self, alerts: Iterable[dict]) -> Aggregated:
        """Aggregate `alerts` and emit the windows that are due now."""
        if not self.enabled:
            return Aggregated([single(alert) for alert in alerts], [])
        now = self._clock()
        out = Aggregated([], [])
        changed: set[str] = set()
        for alert in alerts:
            group = group_of(alert)
            window = self._open.get(group)
            if window is None:
                if len(self._open) >= self.max_open:
                    first = min(self._open, key=lambda g: self._open[g].end)
                    self._close(first, out)
                    changed.discard(first)
                    out.early += 1
                self._open[group] = Window(single(alert), now + self.window_seconds)
            else:
                merge(window.alert, alert, self.keep_uids)
            changed.add(group)
            if self.count_threshold and self._open[group].alert["count"] >= self.count_threshold:
                self._close(group, out)
                changed.discard(group)
        for group in [g for g, window in self._open.items() if window.end <= now]:
            self._close(group, out)
            changed.discard(group)
        out.states += [self._state(group, self._open[group], True) for group in sorted(changed)]
        out.alerts += self._adopt(now, out)
        return out

    def _close(self, group: str, out: Aggregated) -> None:
        window = self._open.pop(group)
        out.alerts.append(window.alert)
        out.states.append(self._state(group, window, False))

    def _state(self, group: str, window: Window, is_open: bool) -> dict:
        return {"scorer_id": self.scorer_id, "group": group, "open": is_open,
                "window_end": window.end, "alert": encode_alert(window.alert)}

    def _adopt(self, now: float, out: Aggregated) -> list[dict]:
        """Windows of other scorers left open well past their end: their owner is gone."""
        adopted = []
        for key, (end, record) in list(self._others.items()):
            if end + self.window_seconds <= now:
                del self._others[key]
                adopted.append(decode_alert(record["alert"]))
                out.states.append({**record, "open": False})
        return adopted

    def restore(self, records: Iterable[dict], mine: bool = True) -> None:
        """Apply AlertWindow records read from the topic, in order: at start (`mine`) our own
        open windows reopen; others' are watched for adoption. Later, our own records coming
        back are older than our memory and must be left out by the caller."""
        for record in records:
            key = state_key(record)
            ours = mine and record["scorer_id"] == self.scorer_id
            if record["open"]:
                if ours:
                    self._open[record["group"]] = Window(decode_alert(record["alert"]),
                                                         record["window_end"])
                else:
                    self._others[key] = (record["window_end"], record)
            elif ours:
                self._open.pop(record["group"], None)
            else:
                self._others.pop(key, None)


def state_key(record: Mapping) -> str:
    return f"{record['scorer_id']}/{record['group']}"


def merge(into: dict, alert: Mapping, keep_uids: int) -> None:
    into["count"] += 1
    into["first_seen"] = min(into["first_seen"], alert["ts"])
    into["last_seen"] = max(into["last_seen"], alert["ts"])
    if len(into["uids"]) < keep_uids:
        into["uids"].append(alert["uid"])
