"""The services through a SASL_SSL listener (SCRAM-SHA-512 over TLS) with ACLs enforced.

The development broker is started here with `Secured`: certificates generated now
(`headbits.devtools.certificates`), SCRAM users written when its log dir is formatted, KRaft's
StandardAuthorizer. The services get the README's settings (security protocol, mechanism, user,
password, CA file) from HEADBITS_* variables, exactly as in production.
"""

from __future__ import annotations

import signal
import time

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from headbits.common.kafka import KafkaSettings, admin
from headbits.devtools.harness import ServiceProcess, read_topic
from tests.source_helpers import make_heads, produce_heads

pytestmark = pytest.mark.kafka

USERS = {"admin": "admin-secret-1", "featurizer": "featurizer-secret-2",
         "intruder": "intruder-secret-3"}
TOPICS = {"heads": "sec.heads", "features": "sec.features", "deadletter": "sec.deadletter"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    from headbits.devtools import kafka_broker
    from headbits.devtools.certificates import make_pki

    folder = tmp_path_factory.mktemp("secured")
    pki = make_pki(folder / "pki")
    broker = kafka_broker.start(folder / "kafka", secured=kafka_broker.Secured(
        pki.server.cert_file, pki.server.key_file, USERS))
    try:
        yield broker, pki
    finally:
        broker.stop()


def env_for(broker, pki, user: str) -> dict[str, str]:
    """The README's settings for a service behind SASL_SSL with SCRAM."""
    return {
        "HEADBITS_BOOTSTRAP_SERVERS": broker.sasl_ssl_servers,
        "HEADBITS_SECURITY_PROTOCOL": "SASL_SSL",
        "HEADBITS_SASL_MECHANISM": "SCRAM-SHA-512",
        "HEADBITS_SASL_USERNAME": user,
        "HEADBITS_SASL_PASSWORD": USERS[user],
        "HEADBITS_SSL_CA_LOCATION": str(pki.ca_file),
        "HEADBITS_CREATE_TOPICS": "false",
        "HEADBITS_METRICS_PORT": "0",
        **{f"HEADBITS_{kind.upper()}_TOPIC": name for kind, name in TOPICS.items()},
    }


def settings_for(broker, pki, user: str) -> KafkaSettings:
    from headbits.common.settings import Secret

    return KafkaSettings(
        bootstrap_servers=broker.sasl_ssl_servers, security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512", sasl_username=user, sasl_password=Secret(USERS[user]),
        ssl_ca_location=str(pki.ca_file), topic_partitions=1,
        **{f"{kind}_topic": name for kind, name in TOPICS.items()})


def grant_featurizer(settings: KafkaSettings) -> None:
    """Exactly what the featurizer needs: read heads in its group, write features and letters."""
    def acl(kind, name, operation, pattern=ResourcePatternType.LITERAL):
        return AclBinding(kind, name, pattern, "User:featurizer", "*", operation,
                          AclPermissionType.ALLOW)

    bindings = [
        acl(ResourceType.TOPIC, TOPICS["heads"], AclOperation.READ),
        acl(ResourceType.TOPIC, TOPICS["features"], AclOperation.WRITE),
        acl(ResourceType.TOPIC, TOPICS["deadletter"], AclOperation.WRITE),
        acl(ResourceType.GROUP, "headbits-featurizer", AclOperation.READ),
    ]
    client = admin(settings)
    for future in client.create_acls(bindings).values():
        future.result()


def test_a_service_with_its_acls_works_and_one_without_is_refused_clearly(secured, tmp_path):
    from headbits.common.kafka import ensure_topics

    broker, pki = secured
    admin_settings = settings_for(broker, pki, "admin")
    ensure_topics(admin_settings, TOPICS.values())
    grant_featurizer(admin_settings)
    heads = make_heads(20)
    produce_heads(admin_settings, TOPICS["heads"], heads)

    featurizer = ServiceProcess("featurizer", env_for(broker, pki, "featurizer"), tmp_path)
    featurizer.wait_started()
    features = read_topic(admin_settings, TOPICS["features"], "features",
                          lambda got: len(got) >= len(heads), timeout=60)
    assert {record["uid"] for record in features} == {head.uid for head in heads}
    assert featurizer.stop() == 0

    started = time.monotonic()
    intruder = ServiceProcess("featurizer", env_for(broker, pki, "intruder"), tmp_path)
    try:
        code = intruder.process.wait(60)
    finally:
        intruder.stop(signal.SIGKILL)
    assert code == 1, intruder.log_tail()
    assert time.monotonic() - started < 60
    errors = [line for line in intruder.log_lines() if line.get("level") == "error"]
    assert errors, intruder.log_tail()
    (refused,) = [line for line in errors if line["msg"] == "refused by Kafka"]
    assert refused["code"].endswith("AUTHORIZATION_FAILED"), refused
    assert refused["principal"] == "User:intruder" and "ACLs" in refused["hint"]
    assert USERS["intruder"] not in intruder.log_path.read_text()
