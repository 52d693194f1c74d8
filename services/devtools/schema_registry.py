"""A real Confluent-compatible schema registry for development and tests: Apicurio Registry.

A development stand-in only in the sense that it is started locally for tests: the registry
itself is real, Apicurio Registry, whose `ccompat` API speaks Confluent Schema Registry's REST
protocol (the one `confluent_kafka.schema_registry` and the services use), here with in-memory
storage. Production points `schema_registry_url` at its own registry.

`start()` builds the registry once with Maven (the version is pinned below) into a cache under
~/.cache/headbits/schema-registry (never in the work tree), starts it on a free loopback port,
waits until its Confluent-compatible API answers and returns it; `stop()` ends it and removes its
run directory. Its storage is in memory, so every start begins empty. Needs Java >= 17 and `mvn`.

Why the build looks the way it does:
- Apicurio publishes its server as a plain jar (`apicurio-registry-app`), not as a runnable
  application: a Quarkus application needs Quarkus's build step, so a generated pom depends on
  the jar and runs `quarkus-maven-plugin:build` with the Quarkus version Apicurio's own parent
  pom uses, importing that parent pom for the versions of everything else.
- That jar carries no bean index, so the build is told to index it (`quarkus.index-dependency`);
  without it Quarkus finds none of its beans and refuses to build.
- 2.4.2.Final is the newest release that could be built from Maven Central when this was
  pinned: 2.5.11.Final, 2.6.13.Final and 3.3.3 lack `apicurio-registry-schema-util-provider`
  there, 3.0.9 and 3.3.2 their parent pom. Even 2.4.2.Final needs two swaps: the JSON-schema
  validator `com.github.everit-org.json-schema` (published on JitPack only) is replaced by the
  same library as `com.github.erosb:everit-json-schema`, and the Quarkus extension
  `apicurio-common-app-components-config-index` is held at 0.1.10.Final, because the
  `-deployment` half of the 0.1.18.Final it asks for is missing there.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from headbits.devtools.jvm import (
    DevToolError,
    JavaServer,
    find_java,
    maven,
)
from headbits.devtools.loopback_server import free_port

APICURIO_VERSION = "2.4.2.Final"
QUARKUS_VERSION = "2.16.4.Final"  # what Apicurio's parent pom of that release builds with
EVERIT_JSON_SCHEMA_VERSION = "1.14.2"  # the version that release asks for
CONFIG_INDEX_VERSION = "0.1.10.Final"
# Apicurio 2.x serves the Confluent API as both v6 and v7; v7 is also Apicurio 3's path.
API_PATH = "/apis/ccompat/v7"
CACHE_ENV = "HEADBITS_SCHEMA_REGISTRY_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "headbits" / "schema-registry"
# A few subjects in memory; C1 only and the serial collector start it about twice as fast.
JVM_OPTIONS = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
RUNNER = "registry-runner.jar"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>headbits.dev</groupId>
  <artifactId>schema-registry</artifactId>
  <version>1</version>
  <packaging>jar</packaging>
  <properties>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
    <quarkus.package.type>legacy-jar</quarkus.package.type>
    <quarkus.index-dependency.registry.group-id>io.apicurio</quarkus.index-dependency.registry.group-id>
    <quarkus.index-dependency.registry.artifact-id>apicurio-registry-app</quarkus.index-dependency.registry.artifact-id>
  </properties>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>io.apicurio</groupId>
        <artifactId>apicurio-common-app-components-config-index</artifactId>
        <version>{config_index}</version>
      </dependency>
      <dependency>
        <groupId>io.apicurio</groupId>
        <artifactId>apicurio-registry</artifactId>
        <version>{apicurio}</version>
        <type>pom</type>
        <scope>import</scope>
      </dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>io.apicurio</groupId>
      <artifactId>apicurio-registry-app</artifactId>
      <version>{apicurio}</version>
      <exclusions>
        <exclusion>
          <groupId>com.github.everit-org.json-schema</groupId>
          <artifactId>org.everit.json.schema</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>com.github.erosb</groupId>
      <artifactId>everit-json-schema</artifactId>
      <version>{everit}</version>
    </dependency>
  </dependencies>
  <build>
    <finalName>registry</finalName>
    <plugins>
      <plugin>
        <groupId>io.quarkus</groupId>
        <artifactId>quarkus-maven-plugin</artifactId>
        <version>{quarkus}</version>
        <executions>
          <execution>
            <goals><goal>build</goal></goals>
          </execution>
        </executions>
      </plugin>
    </plugins>
  </build>
</project>
"""


class DevSchemaRegistryError(DevToolError):
    """The development registry could not be built, started or reached; the message says why."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def app_dir() -> Path:
    return cache_dir() / APICURIO_VERSION / "app"


def build_app(quiet: bool = True) -> Path:
    """The directory of the built registry (runner jar and its lib/), built on first use.

    Maven's local repository is only needed for the build, so it is removed afterwards; a lock
    keeps two sessions sharing the cache from building into the same folder at once.
    """
    app = app_dir()
    if (app / ".complete").is_file():
        return app
    home = app.parent
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (app / ".complete").is_file():
            return app
        build = home / "build"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        (build / "pom.xml").write_text(_POM.format(
            apicurio=APICURIO_VERSION, quarkus=QUARKUS_VERSION,
            everit=EVERIT_JSON_SCHEMA_VERSION, config_index=CONFIG_INDEX_VERSION,
        ))
        maven(build / "pom.xml", home / "m2", ["package"],
              f"build Apicurio Registry {APICURIO_VERSION}", quiet, DevSchemaRegistryError)
        target = build / "target"
        if not (target / RUNNER).is_file():
            raise DevSchemaRegistryError(f"the Quarkus build wrote no {RUNNER} in {target}")
        shutil.rmtree(app, ignore_errors=True)
        app.mkdir()
        (target / RUNNER).rename(app / RUNNER)
        (target / "lib").rename(app / "lib")
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(home / "m2", ignore_errors=True)
        (app / ".complete").write_text(APICURIO_VERSION)
    return app


@dataclass
class DevSchemaRegistry(JavaServer):
    """One running development registry: its Confluent-compatible URL, process and files."""

    url: str


def answers(url: str, timeout: float = 2.0) -> bool:
    """True once the Confluent-compatible API at `url` lists its subjects."""
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(run_dir: Path | None = None, timeout: float = 120.0) -> DevSchemaRegistry:
    """Start the registry detached on a free loopback port and wait until its API answers."""
    app = build_app()
    java = find_java("Apicurio Registry", DevSchemaRegistryError)
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="headbits-schema-registry-"))
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        java, *JVM_OPTIONS, "-Djava.awt.headless=true",
        # Vert.x keeps its file cache under java.io.tmpdir: inside the run dir, removed by stop.
        f"-Djava.io.tmpdir={run_dir / 'tmp'}",
        "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={port}",
        "-jar", str(app / RUNNER),
    ]
    log = run_dir / "registry.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=run_dir, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    registry = DevSchemaRegistry(url=f"http://127.0.0.1:{port}{API_PATH}", pid=process.pid,
                                 run_dir=run_dir, version=APICURIO_VERSION)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DevSchemaRegistryError(
                f"Apicurio Registry exited with {process.returncode} while starting; see {log}"
            )
        if answers(registry.url):
            return registry
        time.sleep(0.25)
    registry.stop(remove=False)
    raise DevSchemaRegistryError(
        f"Apicurio Registry did not answer at {registry.url} within {timeout:.0f} s; see {log}"
    )
