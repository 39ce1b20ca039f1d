"""The start-up Kafka preflight: librdkafka's errors become one clear, secret-free message (no broker)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import KafkaError, KafkaException

from agents.cli.main import main
from stream.kafka import kafka_admin
from stream.kafka.kafka_admin import (
    KafkaAdminError,
    KafkaAuthenticationError,
    KafkaTLSError,
    check_connection,
    connection_error,
)

SECRET = "s3cr3t-Pa55w0rd-for-the-test"  # noqa: S105
CONF = {"bootstrap.servers": "k1:9093", "security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice", "sasl.password": SECRET, "ssl.ca.location": "/etc/tagger/ca.pem"}
AUTH = KafkaError(KafkaError._AUTHENTICATION, "sasl_ssl://k1:9093/bootstrap: SASL authentication error: "
                  "Authentication failed during authentication due to invalid credentials with SASL mechanism "
                  "SCRAM-SHA-512 (after 312ms in state AUTH_REQ)")
UNTRUSTED = KafkaError(KafkaError._SSL, "sasl_ssl://k1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL "
                       "routines::certificate verify failed: broker certificate could not be verified")
TRANSPORT = KafkaError(KafkaError._TRANSPORT, "sasl_ssl://k1:9093/bootstrap: Connect to ipv4#10.0.0.1:9093 failed")
ALL_DOWN = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")


def test_authentication_failure_names_user_mechanism_and_settings_not_the_password() -> None:
    error = connection_error(CONF, [TRANSPORT, ALL_DOWN, AUTH])
    assert isinstance(error, KafkaAuthenticationError)
    message = str(error)
    assert message.startswith("Kafka authentication failed at k1:9093: the broker refused SASL SCRAM-SHA-512 "
                              "user 'alice'")
    assert "TAGGER_KAFKA_SASL_PASSWORD" in message and "invalid credentials" in message
    assert SECRET not in message


def test_untrusted_certificate_names_the_ca_file() -> None:
    error = connection_error(CONF, [ALL_DOWN, UNTRUSTED])
    assert isinstance(error, KafkaTLSError)
    assert str(error).startswith("Kafka TLS certificate verification failed at k1:9093")
    assert "/etc/tagger/ca.pem" in str(error) and "TAGGER_KAFKA_SSL_CAFILE" in str(error)
    without_ca = connection_error({k: v for k, v in CONF.items() if k != "ssl.ca.location"}, [UNTRUSTED])
    assert "the system's CA certificates" in str(without_ca)


def test_other_tls_failure_suggests_the_protocol() -> None:
    error = connection_error(CONF, [KafkaError(KafkaError._SSL, "SSL handshake failed: wrong version number")])
    assert isinstance(error, KafkaTLSError)
    assert "Kafka TLS handshake failed at k1:9093" in str(error)
    assert "TAGGER_KAFKA_SECURITY_PROTOCOL" in str(error)


def test_transport_errors_are_not_fatal() -> None:
    assert connection_error(CONF, []) is None
    assert connection_error("k1:9093", [TRANSPORT, ALL_DOWN]) is None


class FakeAdmin:
    """An AdminClient whose metadata requests fail; ``poll`` reports ``errors`` to the error callback."""

    def __init__(self, errors: list[KafkaError], config: dict[str, Any]) -> None:
        self.errors = errors
        self.error_cb: Callable[[KafkaError], None] = config["error_cb"]
        self.config = config

    def list_topics(self, timeout: float) -> Any:
        time.sleep(0.01)
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport "
                                        "failure"))

    def poll(self, timeout: float) -> int:
        for error in self.errors:
            self.error_cb(error)
        return len(self.errors)


def fake_admin(monkeypatch: pytest.MonkeyPatch, errors: list[KafkaError]) -> list[FakeAdmin]:
    made: list[FakeAdmin] = []

    def factory(config: dict[str, Any]) -> FakeAdmin:
        made.append(FakeAdmin(errors, config))
        return made[-1]

    monkeypatch.setattr(kafka_admin, "AdminClient", factory)
    return made


def test_check_connection_fails_fast_on_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    made = fake_admin(monkeypatch, [AUTH])
    started = time.monotonic()
    with pytest.raises(KafkaAuthenticationError):
        check_connection(CONF, timeout=30)
    assert time.monotonic() - started < 5
    assert made[0].config["log_level"] == 0  # librdkafka's own retry lines stay off stderr
    assert made[0].config["sasl.password"] == SECRET  # the client's own security settings


def test_check_connection_gives_up_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_admin(monkeypatch, [TRANSPORT])
    with pytest.raises(KafkaAdminError, match=r"no Kafka broker answered at k1:9093 within 0.3s") as err:
        check_connection(CONF, timeout=0.3)
    assert type(err.value) is KafkaAdminError


def test_check_connection_returns_when_metadata_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    made = fake_admin(monkeypatch, [])
    monkeypatch.setattr(FakeAdmin, "list_topics", lambda self, timeout: object())
    check_connection("k1:9093", timeout=1)
    assert made[0].config["bootstrap.servers"] == "k1:9093"


def test_cli_commands_exit_1_with_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_admin(monkeypatch, [AUTH])
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k1:9093", "TAGGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "TAGGER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "TAGGER_KAFKA_SASL_USERNAME": "alice",
           "TAGGER_KAFKA_SASL_PASSWORD": SECRET}
    for args in (["tail"], ["reevaluate", "--timeout", "1"]):
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 1, result.output
        assert "Error: Kafka authentication failed at k1:9093" in result.output
        assert SECRET not in result.output
