"""A local single-node Apache Kafka for development, tests and the demo.

`headbits kafka-dev start` fetches Apache Kafka's server jars from Maven Central with Maven (the
version is pinned below), caches them under ~/.cache/headbits/kafka (never in the work tree),
formats a fresh KRaft log dir, starts one broker+controller (KRaft combined mode) on a free
loopback port, waits until it answers a metadata request and prints its bootstrap address:

    export HEADBITS_BOOTSTRAP_SERVERS=$(headbits kafka-dev start)
    headbits kafka-dev status
    headbits kafka-dev stop

Needs Java >= 17 and `mvn` on PATH. The broker is for development only: plaintext, replication
factor 1, data in a temporary directory removed by `stop`. Production points the services at
its own cluster (see the README: bootstrap servers, SASL/SSL settings, schema registry URL).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from headbits.devtools.jvm import (
    DevToolError,
    JavaServer,
    find_java,
    maven,
    reap,
)
from headbits.devtools.loopback_server import free_port

KAFKA_VERSION = "4.4.0"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.25.3"
CACHE_ENV = "HEADBITS_KAFKA_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "headbits" / "kafka"
HEAP = "-Xmx768m"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>headbits.dev</groupId>
  <artifactId>kafka-server-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

# The broker logs to a file in its run directory, never to the caller's terminal.
_LOG4J2 = """Configuration:
  status: warn
  Appenders:
    File:
      name: file
      fileName: "${sys:kafka.logs.dir}/server.log"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: file
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: WARN
      - name: state.change.logger
        level: WARN
"""


class DevKafkaError(DevToolError):
    """The development broker could not be fetched, started or reached; the message says why."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def jars_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_dir() / version / "lib"


def fetch_jars(version: str = KAFKA_VERSION, quiet: bool = True) -> Path:
    """The directory of Kafka's server jars, fetched with Maven on first use."""
    lib = jars_dir(version)
    done = lib / ".complete"
    if done.is_file():
        return lib
    build = lib.parent / "build"
    build.mkdir(parents=True, exist_ok=True)
    (build / "pom.xml").write_text(
        _POM.format(scala=SCALA_VERSION, kafka=version, log4j=LOG4J_VERSION)
    )
    goals = ["dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={lib}"]
    maven(build / "pom.xml", lib.parent / "m2", goals, f"fetch Kafka {version} jars", quiet,
          DevKafkaError)
    done.write_text(version)
    return lib


def _cluster_id() -> str:
    """Kafka's cluster-id form (22 URL-safe base64 characters); never starting with "-", which
    `kafka-storage format --cluster-id` would read as an option."""
    return "h" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")[1:]


def _server_properties(run_dir: Path, port: int, controller_port: int, partitions: int) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(run_dir / "data"),
        "num.partitions": str(partitions),
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.retention.check.interval.ms": "60000",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


@dataclass
class DevKafka(JavaServer):
    """One running development broker: where it listens, its process and its files."""

    bootstrap_servers: str
    sasl_ssl_servers: str | None = None  # the SASL_SSL listener, when started with `Secured`

    def to_json(self) -> str:
        return json.dumps({
            "bootstrap_servers": self.bootstrap_servers, "pid": self.pid,
            "run_dir": str(self.run_dir), "version": self.version,
        })

    @classmethod
    def from_json(cls, text: str) -> DevKafka:
        state = json.loads(text)
        return cls(bootstrap_servers=state["bootstrap_servers"], pid=state["pid"],
                   run_dir=Path(state["run_dir"]), version=state["version"])


def _java(run_dir: Path, version: str) -> list[str]:
    """The JVM command line (without the main class) the broker and its tools run with."""
    return [
        find_java("Kafka 4", DevKafkaError), HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={run_dir / 'log4j2.yaml'}",
        f"-Dkafka.logs.dir={run_dir}", "-cp", f"{fetch_jars(version)}/*",
    ]


def start(
    run_dir: Path | None = None,
    version: str = KAFKA_VERSION,
    partitions: int = 4,
    timeout: float = 90.0,
    secured: Secured | None = None,
) -> DevKafka:
    """Format a fresh KRaft log dir, start the broker detached and wait until it answers; with
    `secured`, also a SASL_SSL listener with SCRAM users and ACLs enforced (see `Secured`)."""
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="headbits-kafka-"))
    shutil.rmtree(run_dir / "data", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    port, controller_port = free_port(), free_port()
    config = run_dir / "server.properties"
    properties = _server_properties(run_dir, port, controller_port, partitions)
    scram: list[str] = []
    sasl_port = free_port() if secured else None
    if secured:
        properties += secured.properties(run_dir, port, controller_port, sasl_port)
        # KIP-900: SCRAM credentials go into the bootstrap metadata when the log dir is formatted,
        # so they exist before the first client connects.
        for name, password in secured.users.items():
            scram += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
    config.write_text(properties)
    (run_dir / "log4j2.yaml").write_text(_LOG4J2)
    formatted = subprocess.run(
        [*_java(run_dir, version), "kafka.tools.StorageTool", "format", "-t", _cluster_id(),
         "-c", str(config), *scram],
        capture_output=True, text=True, check=False,
    )
    if formatted.returncode != 0:
        raise DevKafkaError(f"kafka-storage format failed: {formatted.stderr or formatted.stdout}")
    broker = _launch(run_dir, version, f"127.0.0.1:{port}", timeout)
    if sasl_port is not None:
        broker.sasl_ssl_servers = f"127.0.0.1:{sasl_port}"
    return broker


def _launch(run_dir: Path, version: str, bootstrap_servers: str, timeout: float) -> DevKafka:
    """Start the broker of a formatted `run_dir` detached and wait until it answers."""
    from headbits.common.kafka import wait_for_cluster

    with (run_dir / "stdout.log").open("ab") as out:
        process = subprocess.Popen(
            [*_java(run_dir, version), "kafka.Kafka", str(run_dir / "server.properties")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    broker = DevKafka(bootstrap_servers=bootstrap_servers, pid=process.pid, run_dir=run_dir,
                      version=version)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DevKafkaError(
                f"Kafka exited with {process.returncode} while starting; see {run_dir}/server.log"
            )
        if wait_for_cluster(broker.bootstrap_servers, timeout=2.0):
            return broker
    broker.stop(remove=False)
    raise DevKafkaError(f"Kafka did not answer within {timeout:.0f} s; see {run_dir}/server.log")


def stop_broker(broker: DevKafka, kill: bool = False, timeout: float = 30.0) -> None:
    """Take the broker down and keep its files: SIGTERM (controlled shutdown) or SIGKILL (a
    crash: the log dir is recovered at the next start)."""
    if kill and broker.is_alive():
        os.kill(broker.pid, signal.SIGKILL)
        reap(broker.pid, block=True)
    broker.stop(timeout, remove=False)


def resume(broker: DevKafka, timeout: float = 90.0) -> DevKafka:
    """Start a stopped broker again on the same ports and log dir (what a restarted pod does):
    its topics, records and committed offsets are still there."""
    resumed = _launch(broker.run_dir, broker.version, broker.bootstrap_servers, timeout)
    resumed.sasl_ssl_servers = broker.sasl_ssl_servers
    return resumed


@dataclass(frozen=True)
class Secured:
    """A SASL_SSL listener next to the plaintext one: TLS with the server certificate of a
    development PKI (`headbits.devtools.certificates`), SCRAM-SHA-512 users, and KRaft's
    StandardAuthorizer enforcing ACLs there (no ACL: refused). `admin` is a super user; so is
    ANONYMOUS, the principal of the plaintext and controller listeners, which the broker's own
    requests and the rest of the development tools use."""

    server_cert_file: Path
    server_key_file: Path
    users: dict[str, str]  # name -> password
    admin: str = "admin"

    def properties(self, run_dir: Path, port: int, controller_port: int, sasl_port: int) -> str:
        keystore = run_dir / "sasl-keystore.pem"  # Kafka's PEM keystore: key, then chain
        keystore.write_bytes(self.server_key_file.read_bytes() + self.server_cert_file.read_bytes())
        keystore.chmod(0o600)
        settings = {
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port},"
                         f"SASL_SSL://127.0.0.1:{sasl_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},"
                                    f"SASL_SSL://127.0.0.1:{sasl_port}",
            "listener.security.protocol.map":
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
            "listener.name.sasl_ssl.ssl.keystore.location": str(keystore),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{self.admin};User:ANONYMOUS",
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())


def _state_file() -> Path:
    return cache_dir() / "dev" / "state.json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("start", "stop", "status", "fetch"),
                        help="start prints the bootstrap address; fetch only downloads the jars")
    parser.add_argument("--version", default=KAFKA_VERSION,
                        help="Kafka version (default: %(default)s)")
    parser.add_argument("--partitions", type=int, default=4, help="default partitions per topic")


def _start_or_show(args: argparse.Namespace, current: DevKafka | None) -> int:
    if current is None or not current.is_alive():
        current = start(cache_dir() / "dev" / "run", args.version, args.partitions)
        _state_file().write_text(current.to_json())
    print(current.bootstrap_servers)
    return 0


def _stop(current: DevKafka | None) -> int:
    if current is not None:
        current.stop()
    _state_file().unlink(missing_ok=True)
    return 0


def _status(current: DevKafka | None) -> int:
    if current is None or not current.is_alive():
        print("not running")
        return 1
    print(f"running {current.bootstrap_servers} (pid {current.pid}, Kafka {current.version})")
    return 0


def run(args: argparse.Namespace) -> int:
    state = _state_file()
    current = DevKafka.from_json(state.read_text()) if state.is_file() else None
    try:
        if args.action == "fetch":
            print(fetch_jars(args.version, quiet=False))
            return 0
        if args.action == "start":
            return _start_or_show(args, current)
    except DevKafkaError as error:
        print(f"headbits kafka-dev: {error}", file=sys.stderr)
        return 1
    return _stop(current) if args.action == "stop" else _status(current)
