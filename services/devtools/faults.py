"""A pipeline under fault: faults injected at random points, and the invariants it must keep.

Development only (tests/faults/ and bench/faults.py). `FaultPipeline` runs a whole pipeline as
production runs it: its own development Kafka broker, the TF Serving stand-in serving a tiny real
model, and `headbits featurizer` / `headbits scorer` / `headbits collector` as processes with their
settings from HEADBITS_* variables. `run_once` replays a fresh set of heads through the collector
at a steady rate, injects one fault at a random moment of the replay, and checks the invariants
from what reached Kafka:

- every uid that entered (the heads file the collector replays) is on the scores topic at least
  once (the scorer writes every score: `write_scores`);
- no uid has two alerts with different content (an alert is deterministic for a uid and model
  version, so a redelivered connection must give the same alert; see `same_alert` for floats);
- dead letters carry exactly the bad records injected on the heads topic, nothing else;
- recovery: seconds from the fault's end to consumer lag back under `LAG_RECOVERED` records.

Lag is what an operator sees: the committed offsets of the featurizer's and the scorer's groups
behind their input topics' ends, summed. The services here commit every `COMMIT_INTERVAL_MS`
(their `commit_interval_ms` setting), which bounds how finely recovery is timed.

The invariants are judged only from the scores, alerts and dead-letter topics, keyed by uid, and
the topic names come from the settings, so the runner does not depend on the heads and features
topics' record format.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import confluent_kafka
import numpy as np
import pyarrow as pa

from headbits.common.avro import ValueCodec, write_heads_file
from headbits.common.columnar import RowDecoder, batch_schema, encode_batches, objects_table
from headbits.common.kafka import KafkaSettings, Producer
from headbits.common.records import PayloadHead
from headbits.devtools import kafka_broker
from headbits.devtools.harness import ServiceProcess, Topics
from headbits.devtools.loopback_server import free_port

LAG_RECOVERED = 1000
SERVICES = ("collector", "featurizer", "scorer")
STREAMING = ("featurizer", "scorer")
NON_TENSORFLOW = ("collector", "featurizer")  # the scorer loads TensorFlow: its RSS is not bounded
FAULT_KINDS = (
    *(f"sigkill-{name}" for name in SERVICES),
    *(f"sigstop-{name}" for name in SERVICES),
    "broker-restart", "broker-kill", "serving-kill", "serving-stall",
)
GROUPS = {"featurizer": "heads", "scorer": "features"}  # consumer group's service -> input kind
SERVING_DEADLINE_S = 2.0
# Commits twice a second (production: 5 s) so the lag the runner reads is fresh enough to time
# recovery; a killed service replays up to this long of input.
COMMIT_INTERVAL_MS = 500
BAD_RECORDS = 3
CHUNK_HEADS = 5000  # heads an overload burst generates and produces at once (bounds its memory)
CLASSES = ("http", "ssh")
SENSORS = 6  # the trainer splits by sensor and hour: a run's heads must span several groups


class InvariantError(AssertionError):
    """A run broke an invariant; the message names which and the uids or records at fault."""


def synthetic_heads(prefix: str, count: int, rng: np.random.Generator,
                    anomalous_share: float = 0.1) -> list[PayloadHead]:
    """HTTP and SSH connections as Zeek confirms them, and a share of random bytes that the tiny
    model alerts on (so the alert invariants have alerts to judge), from `SENSORS` sensors."""
    heads = []
    for index in range(count):
        kind = rng.random()
        if kind < anomalous_share:
            orig, resp, port, services = rng.bytes(48), rng.bytes(32), 8443, ()
        elif kind < (1 + anomalous_share) / 2:
            orig = b"GET /index.html HTTP/1.1\r\nHost: " + rng.bytes(16)
            resp, port, services = b"HTTP/1.1 200 OK\r\n" + rng.bytes(8), 80, ("http",)
        else:
            orig, resp = b"SSH-2.0-OpenSSH_9.2p1\r\n" + rng.bytes(16), b"SSH-2.0-dropbear\r\n"
            port, services = 22, ("ssh",)
        heads.append(PayloadHead(
            f"{prefix}{index:06d}", time.time(), f"sensor-{index % SENSORS}", "10.9.0.1",
            1024 + index % 60000,
            "10.9.0.2", port, "tcp", services, orig, resp, len(orig), len(resp), False, False))
    return heads


def tiny_model(repository: Path) -> Path:
    """A tiny real model (N=8) exported as version 1 of `headbits`, labelled stable; returns the
    model_config_file TF Serving (the stand-in) serves it from."""
    from headbits.common.model_repository import config_text, model_server_config, write_atomically
    from headbits.featurizer.bits import pack_heads
    from headbits.trainer.export import export_model
    from headbits.trainer.model import TrainingConfig, train

    def labelled(seed: int) -> tuple:
        heads = synthetic_heads("M", 600, np.random.default_rng(seed), anomalous_share=0.0)
        labels = np.array([CLASSES.index(head.services[0]) for head in heads])
        return pack_heads([h.orig_head for h in heads], [h.resp_head for h in heads], 64), labels

    config = TrainingConfig(n=8, hidden_sizes=(32, 16), bottleneck=8, max_epochs=3,
                            batch_size=128, patience=1, target_fpr=0.05, min_threshold_rows=10)
    trained = train(*labelled(0), CLASSES, *labelled(1), config, progress=False)
    export_model(trained, repository, version=1)
    config_file = repository / "models.config"
    write_atomically(config_file, config_text(model_server_config(
        "headbits", str(repository / "headbits"), [1], {"stable": 1})))
    return config_file


@dataclass
class Observed:
    """What reached the output topics, by uid."""

    scored: Counter = field(default_factory=Counter)
    # uid -> each alert's Avro value, decoded only where a uid has more than one to compare:
    # an overload run holds millions (a decoded alert costs several times its bytes).
    alerts: defaultdict = field(default_factory=lambda: defaultdict(list))
    dead_letters: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)


class OutputTail:
    """Reads the scores, alerts and dead-letter topics as they grow (never committing)."""

    def __init__(self, settings: KafkaSettings) -> None:
        from headbits.common.kafka import Consumer

        self.topics = {settings.scores_topic: "scores", settings.alerts_topic: "alerts",
                       settings.deadletter_topic: "deadletter"}
        self._letters = ValueCodec("deadletter", settings.deadletter_topic)
        self._alerts = ValueCodec("alert", settings.alerts_topic)
        self._scores = RowDecoder("score", settings.scores_topic)  # `.v1` records or `.v2` batches
        self._consumer = Consumer(settings, f"faults-tail-{uuid.uuid4().hex}", list(self.topics),
                                  **{"enable.auto.commit": False})
        self.observed = Observed()

    def poll(self, seconds: float = 0.5) -> Observed:
        deadline = time.monotonic() + seconds
        while True:
            messages = self._consumer.consume(5000, 0.2)
            for message in messages:
                kind, key = self.topics[message.topic()], (message.key() or b"").decode()
                if kind == "scores":
                    self.observed.scored.update(
                        self._scores.column(message.value(), message.headers(), "uid"))
                elif kind == "alerts":
                    self._alerts.decode(message.value(), message.headers())  # one of ours
                    self.observed.alerts[key].append(message.value())
                else:
                    letter = self._letters.decode(message.value(), message.headers())
                    source_key = (letter["key"] or b"").decode(errors="replace")
                    self.observed.dead_letters.append((source_key, letter["reason"]))
            if time.monotonic() >= deadline:
                return self.observed

    def close(self) -> None:
        self._consumer.close()


class GroupLag:
    """Committed-offset lag of the streaming services' consumer groups (what operators see)."""

    def __init__(self, topics: Topics) -> None:
        from headbits.common.kafka.settings import connection_config

        self._watch = {}
        for service, kind in GROUPS.items():
            consumer = confluent_kafka.Consumer({
                **connection_config(topics.settings), "group.id": f"headbits-{service}",
                "enable.auto.commit": False,
            })
            partitions = consumer.list_topics(topics[kind], timeout=10).topics[topics[kind]]
            self._watch[service] = (consumer, [
                confluent_kafka.TopicPartition(topics[kind], number)
                for number in partitions.partitions])

    def total(self, timeout: float = 5.0) -> int | None:
        """Records behind, summed over both groups; None while the broker does not answer."""
        lag = 0
        try:
            for consumer, partitions in self._watch.values():
                for committed in consumer.committed(partitions, timeout=timeout):
                    low, high = consumer.get_watermark_offsets(committed, timeout=timeout)
                    lag += high - (committed.offset if committed.offset >= 0 else low)
        except confluent_kafka.KafkaException:  # broker down or restarting: no figure yet
            return None
        return lag

    def close(self) -> None:
        for consumer, _ in self._watch.values():
            consumer.close()


@dataclass
class RunResult:
    """One run's figures (what bench/faults.py tabulates)."""

    run: int
    fault: str
    uids_in: int
    uids_lost: int
    fault_s: float
    recovery_s: float
    alerts: int
    duplicate_alerts: int
    dead_letters: int
    seconds: float  # from the collector's start until every uid was scored
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) so far, in MB; 0 once it has exited."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class FaultPipeline:
    """Broker, TF Serving stand-in, featurizer and scorer, restartable one by one."""

    def __init__(self, work_dir: Path, batch_size: int = 500) -> None:
        self.work_dir = Path(work_dir)
        self.logs = self.work_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.broker = kafka_broker.start(self.work_dir / "kafka", partitions=3)
        self.topics = Topics(self.broker.bootstrap_servers, partitions=3)
        self.serving_config = tiny_model(self.work_dir / "models")
        self.serving_port = free_port()
        self.env = {
            **self.topics.env,
            "HEADBITS_BACKEND": "tfserving",
            "HEADBITS_SERVING_TARGET": f"127.0.0.1:{self.serving_port}",
            "HEADBITS_SERVING_DEADLINE_SECONDS": str(SERVING_DEADLINE_S),
            "HEADBITS_WRITE_SCORES": "true",
            "HEADBITS_WRITE_DRIFT": "false",
            "HEADBITS_BATCH_SIZE": str(batch_size),
            "HEADBITS_COMMIT_INTERVAL_MS": str(COMMIT_INTERVAL_MS),
        }
        self.serving = self._start_serving()
        self.collector_args: tuple[str, ...] = ()
        self.services = {name: self._start(name) for name in STREAMING}
        for process in self.services.values():
            process.wait_started(120)
        self.tail = OutputTail(self.topics.settings)
        self.lag = GroupLag(self.topics)
        self.rss_peaks: dict[str, float] = defaultdict(float)

    def _start(self, name: str) -> ServiceProcess:
        args = self.collector_args if name == "collector" else ()
        return ServiceProcess(name, self.env, self.logs, *args)

    def _start_serving(self) -> ServiceProcess:
        serving = ServiceProcess("serving-standin", self.env, self.logs, "--model-config-file",
                                 str(self.serving_config), "--port", str(self.serving_port),
                                 "--allow_version_labels_for_unavailable_models=true")
        deadline = time.monotonic() + 60
        while "serving-standin (development stand-in" not in serving.log_tail():
            if serving.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the TF Serving stand-in did not start:\n{serving.log_tail()}")
            time.sleep(0.2)
        return serving

    def restart(self, name: str) -> None:
        """Start a killed service again, as its orchestrator would."""
        if name == "serving":
            self.serving.stop(signal.SIGKILL)
            self.serving = self._start_serving()
        else:
            self.services[name] = self._start(name)

    def pid(self, name: str) -> int:
        return (self.serving if name == "serving" else self.services[name]).process.pid

    def sample_rss(self) -> None:
        for name, process in self.services.items():
            self.rss_peaks[name] = max(self.rss_peaks[name], peak_rss_mb(process.process.pid))

    def wait(self, seconds: float) -> None:
        """Sleep while reading the outputs and sampling memory (the tail never falls behind)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sample_rss()
            self.tail.poll(min(0.5, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self.tail.close()
        self.lag.close()
        for process in [*self.services.values(), self.serving]:
            if process.process.poll() is None:
                process.process.send_signal(signal.SIGCONT)
                process.stop(timeout=60)
        self.broker.stop(remove=False)  # its files are in the caller's work dir


def inject(pipeline: FaultPipeline, kind: str, rng: np.random.Generator) -> tuple[float, float]:
    """Apply one fault and undo it; returns (start, end) on the monotonic clock. A killed service
    is started again at once (its orchestrator's restart); the fault ends when it has logged
    "started" (for the scorer that includes loading TensorFlow)."""
    action, _, target = kind.partition("-")
    started = time.monotonic()
    if action == "sigkill":
        pipeline.services[target].stop(signal.SIGKILL)
        pipeline.restart(target)
        pipeline.services[target].wait_started(180)
    elif action == "sigstop":
        os.kill(pipeline.pid(target), signal.SIGSTOP)
        pipeline.wait(float(rng.uniform(3, 12)))
        os.kill(pipeline.pid(target), signal.SIGCONT)
    elif action == "broker":
        kafka_broker.stop_broker(pipeline.broker, kill=target == "kill")
        pipeline.wait(float(rng.uniform(2, 8)))
        pipeline.broker = kafka_broker.resume(pipeline.broker)
    elif kind == "serving-kill":
        pipeline.serving.stop(signal.SIGKILL)
        pipeline.wait(float(rng.uniform(2, 8)))
        pipeline.serving = pipeline._start_serving()
    elif kind == "serving-stall":
        os.kill(pipeline.pid("serving"), signal.SIGSTOP)
        pipeline.wait(float(rng.uniform(2, 5)) * SERVING_DEADLINE_S)
        os.kill(pipeline.pid("serving"), signal.SIGCONT)
    else:
        raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
    return started, time.monotonic()


def produce_bad_records(pipeline: FaultPipeline, prefix: str, count: int) -> set[str]:
    """Records no decoder accepts, keyed `<prefix>BAD<i>`, straight onto the heads topic."""
    producer = Producer(pipeline.topics.settings)
    keys = {f"{prefix}BAD{index}" for index in range(count)}
    for key in sorted(keys):
        producer.produce(pipeline.topics["heads"], b"\xff\x00 not a head " + key.encode(), key)
    producer.flush()
    return keys


def wait_recovered(pipeline: FaultPipeline, timeout: float) -> float:
    """Seconds until lag is under LAG_RECOVERED; raises InvariantError after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        lag = pipeline.lag.total()
        if lag is not None and lag < LAG_RECOVERED:
            return time.monotonic() - started
        pipeline.wait(0.5)
    raise InvariantError(f"lag still {pipeline.lag.total()} records {timeout:.0f} s after the "
                         f"fault ended")


def same_alert(first: dict, second: dict, rel: float = 1e-5) -> bool:
    """Equal in every field, floats to `rel`: a connection scored again in a batch of another
    size gets float32 scores that differ in the last digits (the matrix products' summation
    order), never a different decision."""
    if first.keys() != second.keys():
        return False
    for name, value in first.items():
        other = second[name]
        if isinstance(value, float):
            if abs(value - other) > rel * max(abs(value), abs(other), 1e-12):
                return False
        elif value != other:
            return False
    return True


def check_invariants(observed: Observed, uids: set[str], bad_keys: set[str],
                     prefix: str) -> list[str]:
    """The invariants' violations for one run's uids (empty: all kept)."""
    violations = []
    lost = {uid for uid in uids if uid not in observed.scored}
    if lost:
        violations.append(f"{len(lost)} uids never scored, e.g. {sorted(lost)[:5]}")
    codec = ValueCodec("alert", "faults.alerts")
    differing = []
    for uid, values in observed.alerts.items():
        if uid.startswith(prefix) and len(values) > 1:
            first, *others = (codec.decode(value, codec.headers) for value in values)
            if not all(same_alert(first, other) for other in others):
                differing.append(uid)
    if differing:
        violations.append(f"{len(differing)} uids alerted with different content, e.g. "
                          f"{differing[:5]}")
    letters = {key for key, _ in observed.dead_letters if key.startswith(prefix)}
    if letters - bad_keys:
        violations.append(f"good records dead-lettered: {sorted(letters - bad_keys)[:5]}")
    if bad_keys - letters:
        violations.append(f"bad records not dead-lettered: {sorted(bad_keys - letters)}")
    return violations


def run_once(pipeline: FaultPipeline, run: int, kind: str | None, rng: np.random.Generator,
             heads: int, rate: float, recovery_timeout: float = 240.0) -> RunResult:
    """Replay `heads` fresh heads at `rate` per second through the collector, inject `kind` (or
    no fault) at a random point, and check the invariants."""
    prefix = f"R{run:03d}{uuid.uuid4().hex[:4]}-"
    entered = synthetic_heads(prefix, heads, rng)
    heads_file = pipeline.work_dir / f"{prefix}heads.avro"
    write_heads_file(heads_file, entered)
    bad_keys = produce_bad_records(pipeline, prefix, BAD_RECORDS)
    pipeline.collector_args = ("--source", "heads-file", "--heads-files", str(heads_file),
                               "--replay-rate", f"{rate:g}")
    pipeline.restart("collector")
    started = time.monotonic()
    pipeline.rss_peaks.clear()
    replay_s = heads / rate
    fault_s = recovery_s = 0.0
    if kind is not None:
        pipeline.wait(float(rng.uniform(0.15, 0.6)) * replay_s)
        fault_started, fault_ended = inject(pipeline, kind, rng)
        fault_s = fault_ended - fault_started
        recovery_s = wait_recovered(pipeline, recovery_timeout)
    collector = pipeline.services["collector"]
    deadline = time.monotonic() + replay_s * 3 + recovery_timeout
    while collector.process.poll() is None and time.monotonic() < deadline:
        pipeline.wait(0.5)
    if collector.process.poll() != 0:
        collector.process.kill()
        raise InvariantError(f"run {run}: the collector did not finish cleanly "
                             f"({collector.process.poll()}):\n{collector.log_tail()}")
    collector.stop()
    del pipeline.services["collector"]
    if kind is None:
        recovery_s = wait_recovered(pipeline, recovery_timeout)
    heads_file.unlink()
    return settle(pipeline, run, kind or "none", prefix, {head.uid for head in entered},
                  bad_keys, started, fault_s, recovery_s, recovery_timeout)


def overload_run(pipeline: FaultPipeline, run: int, rng: np.random.Generator, rate: float,
                 seconds: float, recovery_timeout: float = 900.0) -> RunResult:
    """Produce fresh heads straight into the heads topic at up to `rate` per second for
    `seconds`, then time the lag's recovery and check the invariants. The fault is named
    `overload-<achieved rate>/s`.

    The heads go as `.v2` batches keyed by sensor, as the collector produces them, from one pool
    of CHUNK_HEADS generated heads whose uid and timestamp are renewed for every chunk: building
    each head in Python would cap the burst at a few thousand per second on a machine it shares
    with the services it overloads, and the pool keeps this process's memory bounded however
    long the burst."""
    prefix = f"O{run:03d}{uuid.uuid4().hex[:4]}-"
    bad_keys = produce_bad_records(pipeline, prefix, BAD_RECORDS)
    topic = pipeline.topics["heads"]
    headers = batch_schema("payload_head").headers
    producer = Producer(pipeline.topics.settings)
    uids: set[str] = set()
    burst_rng = np.random.default_rng(rng.integers(2**32))
    pool = objects_table("payload_head", synthetic_heads(f"{prefix}pool-", CHUNK_HEADS, burst_rng))

    def chunk_of(tick: int, count: int) -> tuple[pa.Table, list[str]]:
        fresh = [f"{prefix}{tick:05d}-{index:06d}" for index in range(count)]
        part = pool.slice(0, count)
        for name, values in (("uid", pa.array(fresh, pa.string())),
                             ("ts", pa.array(np.full(count, time.time())))):
            index = part.schema.get_field_index(name)
            part = part.set_column(index, part.schema.field(index),
                                   values.cast(part.schema.field(index).type))
        return part, fresh

    def burst() -> None:
        began = time.monotonic()
        tick = 0
        while (elapsed := time.monotonic() - began) < seconds:
            slice_end = min(elapsed + 0.1, seconds)
            due = int(rate * slice_end) - len(uids)
            while due > 0 and time.monotonic() - began < slice_end:  # as many as fit the slice
                part, fresh = chunk_of(tick, min(due, CHUNK_HEADS))
                for sensor, value, rows in encode_batches(part, part.column("sensor"),
                                                          CHUNK_HEADS):
                    producer.produce(topic, value, sensor, headers, records=rows)
                uids.update(fresh)
                due -= len(fresh)
                tick += 1
            producer.poll(0)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - began - elapsed)))
        producer.flush()

    pipeline.rss_peaks.clear()
    started = time.monotonic()
    producing = threading.Thread(target=burst, name="overload", daemon=True)
    producing.start()
    while producing.is_alive():
        pipeline.wait(0.5)
    achieved = len(uids) / (time.monotonic() - started)
    recovery_s = wait_recovered(pipeline, recovery_timeout)
    return settle(pipeline, run, f"overload-{achieved:.0f}/s", prefix, uids, bad_keys, started,
                  time.monotonic() - started - recovery_s, recovery_s, recovery_timeout)


def settle(pipeline: FaultPipeline, run: int, fault: str, prefix: str, uids: set[str],
           bad_keys: set[str], started: float, fault_s: float, recovery_s: float,
           timeout: float) -> RunResult:
    """Wait until every uid is scored and every bad record dead-lettered (or `timeout`), then
    read the run's figures and the invariants' violations."""
    observed = pipeline.tail.observed
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (
        # The count first: the subset test walks every uid (millions in an overload run).
        len(observed.scored) >= len(uids) and all(uid in observed.scored for uid in uids)
        and len({k for k, _ in observed.dead_letters if k.startswith(prefix)}) >= len(bad_keys)
    ):
        pipeline.wait(1.0)
    seconds = time.monotonic() - started
    pipeline.wait(1.0)  # a late duplicate still counts
    alerted = {uid: values for uid, values in observed.alerts.items() if uid.startswith(prefix)}
    return RunResult(
        run=run, fault=fault, uids_in=len(uids),
        uids_lost=sum(1 for uid in uids if uid not in observed.scored),
        fault_s=round(fault_s, 1),
        recovery_s=round(recovery_s, 1), alerts=sum(map(len, alerted.values())),
        duplicate_alerts=sum(len(values) - 1 for values in alerted.values()),
        dead_letters=sum(1 for key, _ in observed.dead_letters if key.startswith(prefix)),
        seconds=round(seconds, 1),
        peak_rss_mb={name: round(mb, 1) for name, mb in pipeline.rss_peaks.items()},
        violations=check_invariants(observed, uids, bad_keys, prefix),
    )


@contextlib.contextmanager
def unwritable(*paths: Path) -> Iterator[None]:
    """Make files and directories unwritable even for root (the immutable attribute; plain
    permissions elsewhere), and writable again on exit. Raises if a write still succeeds."""
    as_root = os.geteuid() == 0
    modes = {path: path.stat().st_mode for path in paths}
    for path in paths:
        if as_root:
            subprocess.run(["chattr", "+i", str(path)], check=True)
        else:
            path.chmod(modes[path] & ~0o222)
    try:
        probe = next(path for path in paths if path.is_dir()) / ".probe"
        with contextlib.suppress(OSError):
            probe.write_text("")
            probe.unlink()
            raise RuntimeError(f"{probe.parent} is still writable")
        yield
    finally:
        for path in paths:
            if as_root:
                subprocess.run(["chattr", "-i", str(path)], check=True)
            else:
                path.chmod(modes[path])


@dataclass
class TrainerRun:
    """The trainer's exit code and log lines, and the repository before and after."""

    code: int
    lines: list[dict]
    before: tuple
    after: tuple


def repository_listing(pipeline: FaultPipeline) -> tuple:
    """The versions on disk and the config file's text: what a trainer run may change."""
    models = pipeline.serving_config.parent / "headbits"
    return (sorted(path.name for path in models.iterdir()), pipeline.serving_config.read_text())


def run_trainer(pipeline: FaultPipeline, read_only: bool) -> TrainerRun:
    """One `headbits trainer` run on the pipeline's features topic into the served repository,
    with the repository unwritable or not; tiny settings (N=8, 2 epochs) and an open gate."""
    env = {
        **pipeline.env,
        "HEADBITS_MODELS_DIR": str(pipeline.serving_config.parent),
        "HEADBITS_CONFIG_FILE": str(pipeline.serving_config),
        "HEADBITS_SETTLE_SECONDS": "0", "HEADBITS_N": "8", "HEADBITS_MAX_EPOCHS": "2",
        "HEADBITS_MIN_ROWS": "100", "HEADBITS_MIN_CLASS_ROWS": "10", "HEADBITS_MAX_ROWS": "3000",
        "HEADBITS_VALIDATION_FOLDS": "3", "HEADBITS_MAX_MACRO_F1_DROP": "1",
        "HEADBITS_MAX_FPR_INCREASE": "1", "HEADBITS_MAX_FALSE_POSITIVE_RATE": "1",
    }
    repository = pipeline.serving_config.parent
    before = repository_listing(pipeline)
    guard: Callable[[], contextlib.AbstractContextManager] = (
        (lambda: unwritable(repository / "headbits", repository, pipeline.serving_config))
        if read_only else contextlib.nullcontext)
    with guard():
        trainer = ServiceProcess("trainer", env, pipeline.logs)
        code = trainer.process.wait(600)
        trainer.stop()
    return TrainerRun(code, trainer.log_lines(), before, repository_listing(pipeline))


def summary(results: list[RunResult], overload: RunResult | None) -> dict:
    """The bench's last line: totals over the runs and the overload run's figures."""
    every = [*results, *([overload] if overload else [])]
    alerts = sum(result.alerts for result in every)
    return {
        "runs": len(results),
        "faults": dict(Counter(result.fault for result in results)),
        "uids_in": sum(result.uids_in for result in every),
        "uids_lost": sum(result.uids_lost for result in every),
        "max_recovery_s": max((result.recovery_s for result in results), default=0.0),
        "duplicate_alert_ratio": round(
            sum(result.duplicate_alerts for result in every) / alerts, 4) if alerts else 0.0,
        "overload_peak_rss_mb": max(
            (mb for name, mb in overload.peak_rss_mb.items() if name in NON_TENSORFLOW),
            default=None) if overload else None,
        "overload_recovery_s": overload.recovery_s if overload else None,
        "peak_rss_mb": {name: max(result.peak_rss_mb.get(name, 0.0) for result in every)
                        for name in (*NON_TENSORFLOW, "scorer")},
    }


def to_json(result: RunResult) -> str:
    return json.dumps(result.__dict__)
