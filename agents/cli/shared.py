"""What the ``tagger`` command modules share: the settings, and the Kafka preflight a command runs first.

The command modules (``agents/cli/main.py`` and the ``*_cli.py`` groups it adds) import
this module; it imports none of them, so imports go one way: cli → commands → shared.
"""

from __future__ import annotations

import click

from stream.settings import Settings


def load_settings() -> Settings:
    """The settings from the environment, or exit 1 naming every bad variable."""
    try:
        return Settings()
    except Exception as exc:  # pydantic's ValidationError names each bad variable
        raise click.ClickException(f"invalid settings: {exc}") from exc


def check_kafka(settings: Settings) -> None:
    """Start-up preflight: reach Kafka with the configured security, or exit 1 naming the cause.

    A wrong SASL password or an untrusted broker certificate ends the command in about a second with
    "Kafka authentication failed ..." or "Kafka TLS certificate verification failed ..." instead of a
    client retrying forever (stream.kafka.kafka_admin.check_connection).
    """
    from stream.kafka.kafka_admin import KafkaAdminError, check_connection
    from stream.security import librdkafka_config

    try:
        check_connection(librdkafka_config(settings))
    except KafkaAdminError as exc:
        raise click.ClickException(str(exc)) from exc


def prepare_kafka(settings: Settings) -> None:
    """A worker's start: the preflight, then its topics (created if missing; a wrong partition count exits 1)."""
    from stream.kafka.kafka_admin import KafkaAdminError
    from stream.kafka.topics import ensure_all_topics

    check_kafka(settings)
    try:
        ensure_all_topics(settings)
    except KafkaAdminError as exc:
        raise click.ClickException(str(exc)) from exc
