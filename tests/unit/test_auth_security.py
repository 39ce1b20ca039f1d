"""Kafka SASL/TLS and Redis AUTH/TLS settings reach every client, and secrets stay masked (no broker)."""

from __future__ import annotations

import ssl
from typing import Any

import faust
import pytest
from pydantic import ValidationError

from stream.faust.app import create_app
from stream.security import aiokafka_options, faust_credentials, librdkafka_config, redis_options
from stream.settings import Settings

SECRET = "s3cr3t-Pa55w0rd-for-the-test"  # noqa: S105


def settings(**kw: Any) -> Settings:
    return Settings(kafka_bootstrap_servers="k1:9093,k2:9093", **kw)


def test_plaintext_by_default() -> None:
    s = settings()
    assert aiokafka_options(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None
    assert librdkafka_config(s) == {"bootstrap.servers": "k1:9093,k2:9093", "security.protocol": "plaintext"}
    assert redis_options(s) == {}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_for_every_kafka_client(mechanism: str) -> None:
    s = settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism=mechanism, kafka_sasl_username="svc",
                 kafka_sasl_password=SECRET, kafka_ssl_check_hostname=False)
    opts = aiokafka_options(s)
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == mechanism
    assert opts["sasl_plain_username"] == "svc" and opts["sasl_plain_password"] == SECRET
    assert isinstance(opts["ssl_context"], ssl.SSLContext) and not opts["ssl_context"].check_hostname
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials) and creds.mechanism.value == mechanism
    assert creds.protocol.value == "SASL_SSL" and creds.password == SECRET
    assert SECRET not in repr(creds)
    conf = librdkafka_config(s)
    assert conf["security.protocol"] == "sasl_ssl" and conf["sasl.mechanism"] == mechanism
    assert conf["sasl.password"] == SECRET and conf["ssl.endpoint.identification.algorithm"] == "none"


def test_sasl_plaintext_and_ssl_only() -> None:
    s = settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="svc", kafka_sasl_password=SECRET)
    creds = faust_credentials(s)
    assert creds.protocol.value == "SASL_PLAINTEXT" and "ssl_context" not in aiokafka_options(s)
    tls = settings(kafka_security_protocol="SSL")
    assert isinstance(faust_credentials(tls), faust.SSLCredentials)
    assert librdkafka_config(tls)["security.protocol"] == "ssl"
    assert "sasl.password" not in librdkafka_config(tls)


def test_faust_app_gets_the_credentials() -> None:
    s = settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="svc", kafka_sasl_password=SECRET)
    app = create_app(s)
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    assert app.conf.broker_credentials.mechanism.value == "SCRAM-SHA-512"


def test_half_configured_security_refuses_to_start() -> None:
    with pytest.raises(ValidationError, match="needs TAGGER_KAFKA_SASL_USERNAME"):
        settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc")
    with pytest.raises(ValidationError, match="need a rediss:// REDIS_URL"):
        settings(redis_ssl_ca_certs="/etc/ssl/ca.pem")


def test_redis_auth_and_tls() -> None:
    s = settings(redis_url="rediss://redis.internal:6380/0", redis_username="tagger", redis_password=SECRET,
                 redis_ssl_ca_certs="/etc/ssl/ca.pem")
    assert redis_options(s) == {"username": "tagger", "password": SECRET, "ssl_cert_reqs": ssl.CERT_REQUIRED,
                                "ssl_ca_certs": "/etc/ssl/ca.pem", "ssl_check_hostname": True}
    from stream.security import redis_client

    client = redis_client(s)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["password"] == SECRET and kwargs["ssl_ca_certs"] == "/etc/ssl/ca.pem"
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"


def test_printed_settings_mask_every_secret() -> None:
    s = settings(redis_url=f"redis://:{SECRET}@r:6379/0", redis_password=SECRET, kafka_sasl_password=SECRET,
                 kafka_ssl_key_password=SECRET, kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u")
    for text in (repr(s), str(s), s.model_dump_json()):
        assert SECRET not in text


def test_kafka_admin_messages_name_only_the_servers() -> None:
    from stream.kafka.kafka_admin import KafkaAdminError, client_config, servers

    conf = {"bootstrap.servers": "127.0.0.1:1", "sasl.password": SECRET}
    assert servers(conf) == "127.0.0.1:1" and client_config(conf) == conf
    from stream.kafka.kafka_admin import partition_count

    with pytest.raises(KafkaAdminError) as err:
        partition_count({"bootstrap.servers": "127.0.0.1:1", "security.protocol": "sasl_plaintext",
                         "sasl.mechanism": "PLAIN", "sasl.username": "u", "sasl.password": SECRET}, "t", timeout=0.5)
    assert SECRET not in str(err.value) and "127.0.0.1:1" in str(err.value)
