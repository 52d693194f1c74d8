"""Fixtures shared by the whole suite.

The capture corpus lives outside the project (`../shared/data/pcaps` from the project root). On a
user's machine it may be absent: tests that need it skip with the reason; `.ci/run` fails early
when it is missing, so in CI they always run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# Property tests check results, not speed: on a shared 2-core machine a case can take far longer
# than Hypothesis' default 200 ms deadline, which would only make the suite flaky. Speed goals
# live in bench/.
settings.register_profile("headbits", deadline=None)
settings.load_profile("headbits")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_PCAPS = PROJECT_ROOT.parent / "shared" / "data" / "pcaps"


@pytest.fixture(scope="session")
def shared_pcaps() -> Path:
    """The shared capture corpus (its README describes LABELS.tsv and MANIFEST.tsv)."""
    if not (SHARED_PCAPS / "LABELS.tsv").is_file():
        pytest.skip(f"shared capture corpus not found at {SHARED_PCAPS} (see README: Data)")
    return SHARED_PCAPS


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """Bootstrap address of a real single-node Apache Kafka (KRaft) started for this session.

    `headbits.devtools.kafka_broker` fetches the server jars with Maven (cached outside the
    project), formats a fresh log dir and starts the broker on a free loopback port; it is
    stopped, and its files removed, when the session ends. Tests use their own topic names and
    consumer groups.
    """
    from headbits.devtools import kafka_broker

    broker = kafka_broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def schema_registry_url():
    """Confluent-compatible API base URL of a real schema registry started for this session.

    `headbits.devtools.schema_registry` builds Apicurio Registry once with Maven (cached outside
    the project) and starts it on a free loopback port with in-memory storage; it is stopped, and
    its files removed, when the session ends. Tests use their own subject names.
    """
    from headbits.devtools import schema_registry

    registry = schema_registry.start()
    try:
        yield registry.url
    finally:
        registry.stop()
