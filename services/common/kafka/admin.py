"""Topic creation (with each topic's retention) and cluster reachability."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from headbits.common.kafka.client_log import client_log_config
from headbits.common.kafka.settings import (
    DAY_MS,
    KafkaConnection,
    TopicCreation,
    connection_config,
    topic_retentions,
)


def admin(settings: KafkaConnection) -> AdminClient:
    return AdminClient({**connection_config(settings), **client_log_config()})


def ensure_topics(
    settings: KafkaConnection, names: Iterable[str], timeout: float = 30.0
) -> list[str]:
    """Create those of `names` that do not exist yet, with their retention; return the created.

    Partitions and replication come from `settings` where it includes `TopicCreation` (else the
    broker's defaults), retention from the topic classes it includes (else 7 days).
    """
    creation = settings if isinstance(settings, TopicCreation) else TopicCreation()
    retention = topic_retentions(settings)
    return create_missing(settings, names, lambda name: NewTopic(
        name,
        num_partitions=creation.topic_partitions,
        replication_factor=creation.topic_replication_factor,
        config={"retention.ms": str(int(retention.get(name, 7.0) * DAY_MS))},
    ), timeout)


def create_missing(settings: KafkaConnection, names: Iterable[str],
                   new_topic: Callable[[str], NewTopic], timeout: float = 30.0) -> list[str]:
    """Create those of `names` that do not exist yet, each as `new_topic(name)` describes it;
    return the created (a topic another client created meanwhile counts as existing)."""
    client = admin(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    missing = [name for name in dict.fromkeys(names) if name not in existing]
    if not missing:
        return []
    created = []
    futures = client.create_topics([new_topic(name) for name in missing], request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def wait_for_cluster(bootstrap_servers: str, timeout: float = 5.0) -> bool:
    """True once a broker at `bootstrap_servers` answers a metadata request within `timeout`."""
    client = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            metadata = client.list_topics(timeout=max(0.2, deadline - time.monotonic()))
        except KafkaException:
            continue
        if metadata.brokers:
            return True
    return False
