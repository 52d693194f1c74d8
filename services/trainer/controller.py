"""Automatic rollout: promote a canary that soaked well, roll back a stable that went wrong.

One pass of a control loop, meant to run every few minutes (the chart's `rollout` CronJob):

1. **Promotion.** A version labelled `canary` (by the trainer, after its offline gate) is shadow-
   scored by the scorer beside `stable` (`headbits scorer --shadow-label canary --write-scores`),
   so the scores topic holds both versions' verdicts on the same connections. Once the canary has
   been labelled for `soak_minutes` and scored at least `min_scored_rows` connections, it becomes
   `stable` if its alert rate stayed within `max_alert_rate_ratio` of stable's (plus
   `alert_rate_slack`), the two disagreed on at most `max_disagreement` of the connections
   both scored, and no scorer reported drift of the traffic meanwhile (traffic that moved
   during the soak says nothing about the canary). A canary that fails is held back (recorded,
   never promoted).
2. **Rollback.** For `watch_minutes` after a promotion, the new stable's live alert rate is
   compared with what the previous stable had before the promotion; leaving that band (same
   ratio and slack) rolls `stable` back to the previous version.

Every decision, with the figures behind it, goes to the JSON log and into the labels history
that `headbits model list`/`status` show. The scorer follows the labels without a restart (it
learns a moved label from the next response). Figures come from the scores topic only, so the
controller needs Kafka and the model repository, nothing else.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from headbits.common.kafka import DriftTopic, KafkaConnection, ScoresTopic
from headbits.common.logs import LogLines, configure_logging, fields
from headbits.common.model_repository import RepositoryError, RolloutState
from headbits.common.settings import add_settings_arguments, setting, settings_from_args
from headbits.common.topic_window import decoded_since
from headbits.trainer.rollout import ModelSettings, Repository

STABLE, CANARY = "stable", "canary"


@dataclass(frozen=True)
class ControllerSettings(ModelSettings, KafkaConnection, ScoresTopic, DriftTopic):
    """Where the scores are, the model repository, and the margins of each decision."""

    soak_minutes: float = setting(60.0, "a canary is shadow-scored this long before promotion")
    watch_minutes: float = setting(120.0, "after a promotion, stable is watched this long")
    min_scored_rows: int = setting(1000, "connections a version must have scored to be judged")
    max_disagreement: float = setting(
        0.02, "share of connections both versions scored on which their alert verdicts may differ"
    )
    max_alert_rate_ratio: float = setting(
        1.5, "a version's alert rate may be at most this times the one it is compared with..."
    )
    alert_rate_slack: float = setting(0.001, "...plus this (so near-zero rates do not flap)")
    read_batch_size: int = setting(5000, "score records fetched and decoded at once")
    log_level: str = setting("info", "debug, info, warning or error")


@dataclass
class VersionFigures:
    """What the scores topic says about one version over a stretch of time."""

    scored: int = 0
    alerts: int = 0

    @property
    def alert_rate(self) -> float:
        return self.alerts / self.scored if self.scored else 0.0


@dataclass
class ScoreFigures:
    """Per version figures, and how two versions' verdicts on the same connections differ."""

    versions: dict[int, VersionFigures] = field(default_factory=lambda: defaultdict(VersionFigures))
    verdicts: dict[str, dict[int, bool]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, records: Iterable[dict]) -> None:
        for record in records:
            figures = self.versions[record["model_version"]]
            figures.scored += 1
            figures.alerts += bool(record["alert"])
            self.verdicts[record["uid"]][record["model_version"]] = bool(record["alert"])

    def disagreement(self, first: int, second: int) -> tuple[int, float]:
        """(connections both versions scored, share on which their verdicts differ)."""
        both = [v for v in self.verdicts.values() if first in v and second in v]
        differing = sum(1 for v in both if v[first] != v[second])
        return len(both), (differing / len(both) if both else 0.0)


@dataclass(frozen=True)
class Decision:
    action: str  # "promote", "rollback", "hold", "wait" or "none"
    version: int | None
    why: dict


def within_band(rate: float, reference: float, settings: ControllerSettings) -> bool:
    return rate <= reference * settings.max_alert_rate_ratio + settings.alert_rate_slack


def labelled_at(state: RolloutState, label: str, version: int) -> float | None:
    """When `label` was last moved to `version` (epoch seconds), from the labels history."""
    for entry in reversed(state.history):
        if entry.get("label") == label and entry.get("to") == version and entry.get(
                "action") in ("promote", "rollback"):
            return datetime.fromisoformat(entry["time"]).timestamp()
    return None


def decide_canary(state: RolloutState, canary_figures: ScoreFigures, now: float,
                  settings: ControllerSettings, drifted: Sequence[str] = ()) -> Decision:
    """Promote, hold or wait for the canary, from the scores since it was labelled and the
    slices (`drifted`, "kind/key") whose drift crossed its threshold meanwhile: traffic that
    moved during the soak says nothing about the canary, so it is held."""
    canary, stable = state.labels.get(CANARY), state.labels.get(STABLE)
    if canary is None or stable is None or canary == stable:
        return Decision("none", canary, {"reason": "no canary beside a different stable"})
    since = labelled_at(state, CANARY, canary)
    soaked = (now - since) / 60 if since is not None else 0.0
    candidate = canary_figures.versions.get(canary, VersionFigures())
    reference = canary_figures.versions.get(stable, VersionFigures())
    both, disagreement = canary_figures.disagreement(canary, stable)
    why = {
        "soaked_minutes": round(soaked, 1), "canary_scored": candidate.scored,
        "canary_alert_rate": candidate.alert_rate, "stable_scored": reference.scored,
        "stable_alert_rate": reference.alert_rate, "scored_by_both": both,
        "disagreement": disagreement, "drifted_slices": sorted(drifted),
    }
    if soaked < settings.soak_minutes or min(candidate.scored, both) < settings.min_scored_rows:
        return Decision("wait", canary, {**why, "reason": "still soaking"})
    failures = []
    if not within_band(candidate.alert_rate, reference.alert_rate, settings):
        failures.append("alert rate above stable's band")
    if disagreement > settings.max_disagreement:
        failures.append(f"disagreement over {settings.max_disagreement}")
    if drifted:
        failures.append("traffic drifted during the soak")
    if failures:
        return Decision("hold", canary, {**why, "reason": "; ".join(failures)})
    return Decision("promote", canary, {**why, "reason": "soaked within every margin"})


def decide_stable(state: RolloutState, before: ScoreFigures, after: ScoreFigures, now: float,
                  settings: ControllerSettings) -> Decision:
    """Roll back a recently promoted stable whose live alert rate left the previous one's band."""
    stable = state.labels.get(STABLE)
    previous = (state.previous.get(STABLE) or [None])[-1]
    promoted = labelled_at(state, STABLE, stable) if stable is not None else None
    if previous is None or promoted is None or now - promoted > settings.watch_minutes * 60:
        return Decision("none", stable, {"reason": "no recent promotion to watch"})
    current = after.versions.get(stable, VersionFigures())
    reference = before.versions.get(previous, VersionFigures())
    why = {
        "stable_scored": current.scored, "stable_alert_rate": current.alert_rate,
        "previous": previous, "previous_scored": reference.scored,
        "previous_alert_rate": reference.alert_rate,
    }
    if min(current.scored, reference.scored) < settings.min_scored_rows:
        return Decision("wait", stable, {**why, "reason": "too few scores yet"})
    if not within_band(current.alert_rate, reference.alert_rate, settings):
        return Decision("rollback", stable, {**why, "reason": "alert rate left its band"})
    return Decision("none", stable, {**why, "reason": "within its band"})


def read_scores(settings: ControllerSettings, since: float, until: float | None = None
                ) -> ScoreFigures:
    """Figures of the score records whose connection time is in [since, until)."""
    figures = ScoreFigures()
    # Kafka timestamps trail connection times: read from a little earlier, filter by `ts`.
    for records in decoded_since(settings, settings.scores_topic, "score", since - 300,
                                 settings.read_batch_size):
        figures.add(r for r in records
                    if r["ts"] >= since and (until is None or r["ts"] < until))
    return figures


def drift_crossings(settings: KafkaConnection, drift_topic: str, version: int | None,
                    since: float) -> list[dict]:
    """Drift records since `since` of `version` (None: any) whose slice crossed its threshold."""
    return [record
            for records in decoded_since(settings, drift_topic, "drift", since)
            for record in records
            if record["crossed"] and (version is None or record["model_version"] == version)]


def control_once(settings: ControllerSettings, now: float | None = None) -> list[Decision]:
    """One pass: decide on the stable first (a rollback wins), then on the canary; act."""
    now = time.time() if now is None else now
    log = configure_logging("rollout", settings.log_level)
    repository = Repository(settings, out=LogLines(log))
    state = repository.state
    decisions = []
    stable = state.labels.get(STABLE)
    promoted = labelled_at(state, STABLE, stable) if stable is not None else None
    if promoted is not None and state.previous.get(STABLE):
        lookback = settings.watch_minutes * 60
        stable_decision = decide_stable(
            state, read_scores(settings, promoted - lookback, promoted),
            read_scores(settings, promoted), now, settings)
        decisions.append(stable_decision)
        if stable_decision.action == "rollback":
            repository.rollback(STABLE, stable_decision.why)
    if not any(d.action == "rollback" for d in decisions):
        canary = state.labels.get(CANARY)
        since = labelled_at(state, CANARY, canary) if canary is not None else None
        figures = read_scores(settings, since) if since is not None else ScoreFigures()
        drifted = [] if since is None else sorted({
            f"{d['kind']}/{d['key']}"
            for d in drift_crossings(settings, settings.drift_topic, stable, since)})
        canary_decision = decide_canary(state, figures, now, settings, drifted)
        decisions.append(canary_decision)
        if canary_decision.action == "promote":
            repository.promote(canary_decision.version, STABLE, canary_decision.why)
        elif canary_decision.action == "hold":
            repository.note("hold", CANARY, canary_decision.version, canary_decision.why)
    for decision in decisions:
        log.info(f"rollout decision: {decision.action}", extra=fields(
            action=decision.action, version=decision.version, **decision.why))
    return decisions


def configure(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, ControllerSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(ControllerSettings, args)
    try:
        control_once(settings)
    except RepositoryError as error:
        configure_logging("rollout", settings.log_level).error(
            "rollout failed", extra=fields(error=str(error)))
        return 1
    return 0
