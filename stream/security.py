"""Kafka SASL/TLS and Redis AUTH/TLS options, built once from :class:`Settings` for every client.

The tagger talks to Kafka through three clients (Faust's aiokafka, our own
aiokafka readers, confluent-kafka for admin and tools) and to Redis through
redis-py; each wants the same security settings spelled its own way. The
secrets are taken out of their ``SecretStr`` only here, at the moment a client
is configured, and never put into a message: errors name the setting, not its
value.
"""

from __future__ import annotations

import ssl
from typing import Any

from .settings import Settings

_REDIS_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for Kafka (SSL and SASL_SSL), None for plaintext protocols."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_certfile is not None:
        password = settings.kafka_ssl_key_password
        context.load_cert_chain(str(settings.kafka_ssl_certfile),
                                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
                                password=password.get_secret_value() if password else None)
    return context


def _sasl_password(settings: Settings) -> str | None:
    password = settings.kafka_sasl_password
    return password.get_secret_value() if password is not None else None


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaConsumer``/``AIOKafkaProducer`` (besides bootstrap_servers)."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.startswith("SASL"):
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                       sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=_sasl_password(settings))
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    return options


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials``: None, ``SSLCredentials`` or ``SASLCredentials``."""
    import faust

    protocol = settings.kafka_security_protocol
    context = kafka_ssl_context(settings)
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=settings.kafka_sasl_username, password=_sasl_password(settings),
                                 ssl_context=context, mechanism=settings.kafka_sasl_mechanism)


def librdkafka_config(settings: Settings) -> dict[str, Any]:
    """confluent-kafka (librdkafka) configuration: bootstrap servers plus security keys."""
    protocol = settings.kafka_security_protocol
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap_servers,
                              "security.protocol": protocol.lower()}
    if protocol.startswith("SASL"):
        config.update({"sasl.mechanism": settings.kafka_sasl_mechanism,
                       "sasl.username": settings.kafka_sasl_username,
                       "sasl.password": _sasl_password(settings)})
    if protocol.endswith("SSL"):
        files = {"ssl.ca.location": settings.kafka_ssl_cafile, "ssl.certificate.location": settings.kafka_ssl_certfile,
                 "ssl.key.location": settings.kafka_ssl_keyfile}
        config.update({k: str(v) for k, v in files.items() if v is not None})
        if settings.kafka_ssl_key_password is not None:
            config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
        config["ssl.endpoint.identification.algorithm"] = "https" if settings.kafka_ssl_check_hostname else "none"
    return config


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``redis.Redis.from_url`` besides the URL: AUTH and TLS."""
    options: dict[str, Any] = {}
    if settings.redis_username is not None:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if settings.redis_url.get_secret_value().startswith("rediss://"):
        options["ssl_cert_reqs"] = _REDIS_CERT_REQS[settings.redis_ssl_cert_reqs]
        files = {"ssl_ca_certs": settings.redis_ssl_ca_certs, "ssl_certfile": settings.redis_ssl_certfile,
                 "ssl_keyfile": settings.redis_ssl_keyfile}
        options.update({k: str(v) for k, v in files.items() if v is not None})
        options["ssl_check_hostname"] = settings.redis_ssl_cert_reqs == "required"
    return options


def redis_client(settings: Settings) -> Any:
    """An asyncio Redis client with the configured URL, AUTH and TLS."""
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(settings.redis_url.get_secret_value(), **redis_options(settings))
