"""Every topic the tagger reads or writes, declared once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from stream.faust.app import TABLE_NAME
from stream.settings import Settings


@dataclass(frozen=True)
class Topics:
    """The tagger's topics on one Faust app."""

    source: faust.TopicT  # inputs + rekey + commands: one co-partitioned stream
    tag_changes: faust.TopicT
    churn_alerts: faust.TopicT
    dead_letters: faust.TopicT
    rekey: faust.TopicT
    commands: faust.TopicT
    audit_log: faust.TopicT


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    """Declare the topics on ``app``. Values and keys are raw bytes; we decode."""
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    n = settings.partitions
    internal: dict[str, Any] = {"partitions": n, "internal": True, **raw}
    names = [*settings.keyed_topics, settings.rekey_topic, settings.commands_topic]
    return Topics(
        source=app.topic(*names, **raw),
        tag_changes=app.topic(settings.tag_changes_topic, partitions=n, **raw),
        churn_alerts=app.topic(settings.churn_alerts_topic, partitions=n, **raw),
        dead_letters=app.topic(settings.dead_letters_topic, partitions=n, **raw),
        rekey=app.topic(settings.rekey_topic, **internal),
        commands=app.topic(settings.commands_topic, **internal),
        audit_log=app.topic(settings.audit_log_topic, partitions=n, **raw),
    )


def all_topic_names(settings: Settings) -> list[str]:
    """Names of every topic the worker needs, for creation and checks."""
    return [
        *settings.keyed_topics,
        settings.rekey_topic,
        settings.commands_topic,
        settings.tag_changes_topic,
        settings.churn_alerts_topic,
        settings.dead_letters_topic,
        settings.audit_log_topic,
    ]


def changelog_topic_name(settings: Settings) -> str:
    """The customers table's changelog (``cleanup.policy=compact``): created by :func:`ensure_all_topics` before
    Faust starts, as Faust would (its partitions, ``topic_replication_factor``)."""
    return f"{settings.app_id}-{TABLE_NAME}-changelog"


def compacted_topic_names(settings: Settings) -> list[str]:
    """Topics that must be compacted, never deleted by age: the latest profile and the latest state (or
    tombstone) per customer. Every other topic keeps the broker's ``cleanup.policy=delete``."""
    return [settings.profiles_topic, changelog_topic_name(settings)]


def ensure_all_topics(settings: Settings) -> None:
    """Create the tagger's topics if missing; refuse mismatched partition counts, and compacted topics that
    are not compacted (not on Tansu, which never compacts).

    The changelog is created here too, not left to Faust: Faust declared it while its consumer was starting,
    and a record that came before the consumer's metadata listed it failed Faust's partition check
    (``PartitionsMismatch``: "the changelog has 0 partitions") and was dead-lettered (seen once in CI, over
    SASL_SSL).
    """
    from stream.kafka.kafka_admin import ensure_topics
    from stream.security import librdkafka_config

    changelog = changelog_topic_name(settings)
    topics = dict.fromkeys([*all_topic_names(settings), changelog], settings.partitions)
    ensure_topics(librdkafka_config(settings), topics, compacted=compacted_topic_names(settings),
                  check_compacted=not settings.tansu_compat,
                  replication={changelog: settings.topic_replication_factor})
