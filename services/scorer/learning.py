"""Learning mode per sensor: a new sensor's alerts are tagged `learning` (recorded, not paged).

A sensor just added to the deployment sees traffic the model has not been retrained on yet; its
first alerts are mostly the site's normal oddities. For `hours` after its learning started, or
until `rows` of its connections were scored (whichever limit is reached first; 0 leaves a limit
out, both 0 turn learning off), its alerts carry `learning: true`: they are written, aggregated
and suppressed like others, but not sent to the Zeek sensors as notices, and a SIEM can route
them apart. When a sensor's learning started is kept in the rules topic as `learning/<sensor>`
(first scorer to see the sensor writes it), so replicas and restarts agree on the period; rows
are counted by each replica since it learned of the start (a restart counts again: learning can
only last longer, never end early). `headbits rules reset-learning SENSOR` writes a new start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from headbits.scorer.rules import LEARNING, Rule, RuleSet


@dataclass
class SensorLearning:
    started: float
    rows: int = 0


class LearningMode:
    def __init__(self, hours: float, rows: int,
                 clock: Callable[[], float] = time.time) -> None:
        if hours < 0 or rows < 0:
            raise ValueError("learning hours and rows are not negative")
        self.seconds = hours * 3600.0
        self.rows = rows
        self._clock = clock
        self._sensors: dict[str, SensorLearning] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.seconds or self.rows)

    def observe(self, sensors: Iterable[str], rules: RuleSet) -> list[Rule]:
        """Count scored rows per sensor; return learning-start records to write for sensors
        neither this replica nor the rules topic knew (empty when learning is off)."""
        if not self.enabled:
            return []
        new = []
        now = self._clock()
        for sensor in sensors:
            state = self._state(sensor, rules)
            if state is None:
                state = self._sensors[sensor] = SensorLearning(now)
                rules.learning_started[sensor] = now
                new.append(start_record(sensor, now, "scorer", "first seen by a scorer"))
            state.rows += 1
        return new

    def _state(self, sensor: str, rules: RuleSet) -> SensorLearning | None:
        """This replica's state of the sensor, reset when the topic says learning (re)started
        later than this replica thought."""
        started = rules.learning_started.get(sensor)
        state = self._sensors.get(sensor)
        if started is not None and (state is None or started > state.started):
            state = self._sensors[sensor] = SensorLearning(started)
        return state

    def learning(self, sensor: str, rules: RuleSet) -> bool:
        if not self.enabled:
            return False
        state = self._state(sensor, rules)
        if state is None:
            return True
        return self.left(state) > 0

    def left(self, state: SensorLearning) -> float:
        """Share of learning left, 0..1: the smaller of the time and rows shares left (learning
        ends when either configured limit is reached)."""
        shares = []
        if self.seconds:
            shares.append(1.0 - (self._clock() - state.started) / self.seconds)
        if self.rows:
            shares.append(1.0 - state.rows / self.rows)
        return max(0.0, min(shares))

    def progress(self) -> dict[str, float]:
        """Sensor -> share of learning left, for the gauge."""
        return {sensor: self.left(state) for sensor, state in self._sensors.items()}


def start_record(sensor: str, now: float, author: str, comment: str) -> Rule:
    return Rule(id=f"{LEARNING}/{sensor}", kind=LEARNING, sensor=sensor, created=now,
                author=author, comment=comment, origin="scorer")
