"""Settings: the one place configuration is read.

Values come from environment variables: ``KAFKA_BOOTSTRAP_SERVERS`` and
``REDIS_URL`` without a prefix, everything else as ``TAGGER_<FIELD>``.
Faust is given every value explicitly and reads no environment of its own.

No other module reads the environment. Besides :class:`Settings` this module has
the two other ways in and out of it:

* :func:`environment_value`: one field's raw value, for a command that needs only
  that field and must not refuse to run over an unrelated bad setting
  (``tagger rules validate``, ``tagger dev``);
* :func:`child_environment`: the environment a child process gets (a worker of
  ``tagger dev`` or the benchmark, an embedded broker or Redis).

Fixed values that bound loops and waits, and that are not settings, are in
:mod:`stream.tuning`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Tagger configuration (frozen; print it safely: secrets are masked)."""

    model_config = SettingsConfigDict(env_prefix="TAGGER_", frozen=True, extra="ignore", populate_by_name=True)

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "TAGGER_KAFKA_BOOTSTRAP_SERVERS"),
        description="Comma-separated Kafka bootstrap servers (host:port).",
    )
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        validation_alias=AliasChoices("REDIS_URL", "TAGGER_REDIS_URL"),
        description="Redis URL for the customer view projection and global state.",
    )

    app_id: str = Field("customer-tagger", description="Consumer group and internal-topic prefix.")
    redis_prefix: str = Field("tagger", description="Prefix of every Redis key this app writes.")
    history_size: int = Field(100, ge=1, le=10_000,
                              description="Changes kept per customer in its history (GET /customers/{id}/history).")
    web_host: str = Field("127.0.0.1", description="Host other workers use to reach this one.")
    web_bind: str = Field("127.0.0.1", description="Address the web server binds to.")
    web_port: int = Field(6066, description="Port of the worker's HTTP API.")
    clock: Literal["wall", "stream"] = Field(
        "wall",
        description="'wall': now is the system clock. 'stream': now is the largest event "
        "time seen on any input, held globally in Redis.",
    )
    currency: str = Field("USD", description="The one currency amounts are counted in.")
    max_event_bytes: int = Field(1 << 20, description="Larger input messages are dead-lettered.")
    dead_letter_value_bytes: int = Field(
        256 << 10,
        description="A dead letter carries at most this many bytes of the original value "
        "(flagged 'value_truncated'); the original stays at its topic/partition/offset.",
    )
    partitions: int = Field(8, description="Partition count of every input and internal topic.")
    topic_replication_factor: int = Field(1, ge=1, description="Replication factor of the topics Faust creates "
                                          "(the customers table's changelog): 3 on a 3-broker cluster. The "
                                          "topics stream.kafka.topics creates take the broker's "
                                          "default.replication.factor.")

    orders_topic: str = "orders"
    logins_topic: str = "logins"
    tickets_topic: str = "support-tickets"
    profiles_topic: str = Field("customer-profiles", description="Compacted customer attributes topic.")
    tag_commands_topic: str = Field("tag-commands", description="Manual tags and score adjustments.")
    tag_changes_topic: str = "tag-changes"
    churn_alerts_topic: str = Field("churn-alerts", description="Churn-risk level changes, keyed by customer.")
    dead_letters_topic: str = "dead-letters"
    privacy_requests_topic: str = Field("privacy-requests", description="Erasure requests "
                                        "({request_id, customer_id, ts, type: erase}), keyed by customer_id.")
    audit_log_topic: str = Field("audit-log", description="Audit records of every API read and write and of "
                                 "every erasure (who, what, when, which customer; never monetary values).")

    api_tokens: str = Field("", description="API bearer tokens: a JSON list of {name, role, teams, sha256} "
                            "(hashes only; `tagger token new` makes one). No tokens: the API answers 401.")
    api_tokens_file: Path | None = Field(None, description="YAML or JSON file with more token entries "
                                         "(a list, or {tokens: [...]}); read at start-up.")
    audit_file: Path | None = Field(None, description="Also append every audit record to this JSON-lines file.")
    webhooks_file: Path | None = Field(None, description="YAML file of webhook subscriptions "
                                                         "(stream/webhook_delivery.py); "
                                       "none: no webhook sink runs.")
    webhook_dead_letters_topic: str = Field("webhook-dead-letters", description="Webhook deliveries that failed "
                                            "for good (after retries, or a 4xx), with the message and the error.")

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol, for every Kafka client of the tagger.")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism (with SASL_PLAINTEXT or SASL_SSL).")
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (masked when printed).")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) that signed the brokers' certificates "
                                          "(default: the system's).")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    kafka_ssl_keyfile: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Password of the client key.")
    kafka_ssl_check_hostname: bool = Field(True, description="Check that the broker certificate names the host.")
    redis_username: str | None = Field(None, description="Redis ACL user (AUTH username password).")
    redis_password: SecretStr | None = Field(None, description="Redis AUTH password; overrides one in REDIS_URL.")
    redis_ssl_ca_certs: Path | None = Field(None, description="CA bundle for a rediss:// URL (default: the system's).")
    redis_ssl_certfile: Path | None = Field(None, description="Client certificate for a rediss:// URL.")
    redis_ssl_keyfile: Path | None = Field(None, description="Client key for a rediss:// URL.")
    redis_ssl_cert_reqs: Literal["required", "optional", "none"] = Field(
        "required", description="Server certificate check for a rediss:// URL.")

    rules_dir: Path | None = Field(None, description="Ruleset directory (default: shipped rules).")
    store: str = Field("memory://", description="Faust table store: memory:// or rocksdb://.")
    datadir: Path = Field(Path(".tagger-data"), description="Faust data directory.")
    rocksdb_write_buffer_mb: int = Field(16, ge=1, description="RocksDB store: memtable size per partition (MiB); "
                                         "at most 2 per partition are held before a flush to disk.")
    rocksdb_block_cache_mb: int = Field(64, ge=1, description="RocksDB store: block cache per partition (MiB).")
    rules_reload_interval: float = Field(5.0, description="Seconds between checks of the rules directory.")
    sweep_chunk: int = Field(250, description="Customers re-evaluated per command message; the rest of a "
                             "sweep queues behind new events so intake never waits long.")
    sweep_interval: float = Field(60.0, description="Seconds between re-evaluation sweeps.")
    redis_flush_interval: float = Field(0.2, description="Seconds between Redis view flushes (the customer of "
                                        "a big order or complaint is written at once).")
    big_order_multiple: float = Field(3.0, ge=0, description="A paid order this many times the customer's "
                                      "average order (last 365 days) is big: evaluated and flushed at once. 0: off.")
    big_order_amount: float = Field(10000.0, ge=0, description="A paid order of at least this amount is big "
                                    "whatever the customer's average. 0: off.")
    coalesce_after: float = Field(0.1, ge=0, description="A message that reaches the worker this many seconds "
                                  "after its Kafka timestamp, with more messages behind it, is part of a backlog: "
                                  "its customer's evaluation waits for them, so that a customer with several events "
                                  "in the backlog is evaluated once (big orders and complaints never wait).")
    coalesce_customers: int = Field(20_000, ge=0, description="At most this many customers wait for their "
                                    "evaluation (see coalesce_after); beyond it the oldest run. 0: every message is "
                                    "evaluated at once.")
    coalesce_window: float = Field(0.5, ge=0, description="Seconds an evaluation may wait (see coalesce_after), or "
                                   "half as long as its message was already late or as the messages behind it "
                                   "will take, up to coalesce_window_max.")
    coalesce_window_max: float = Field(5.0, ge=0, description="The longest an evaluation waits however late its "
                                       "message (see coalesce_window).")
    intake: Literal["batch", "stream"] = Field(
        "batch", description="'batch': fetched records go straight to the tagger (stream/faust/intake.py: Faust's "
        "fetch, offset bookkeeping and commits, without its per-message stream path, ~100 µs a message here). "
        "'stream': through a Faust agent's stream, as any Faust app.")
    cutoff_refresh_interval: float = Field(1.0, description="Seconds between tier cut-off reads.")
    trend_interval: int = Field(3600, gt=0, description="Seconds of stream time between two trend points "
                                "(tier, churn-level and tag counts, cluster-wide; stream/view/trend_store.py): "
                                "one point at every multiple of it, once the stream clock passes it.")
    trend_span: int = Field(90 * 86400, gt=0, description="Seconds of stream time trend points are kept; "
                            "older points are trimmed as new ones are recorded.")
    reversal_window: float = Field(3600.0, ge=0, description="Seconds (of the worker's clock, see clock) within "
                                   "which a tier or churn level change that undoes the customer's previous one, "
                                   "with no input of that customer in between, counts as a reversal "
                                   "(tagger_reversals_total).")
    stall_timeout: float = Field(120.0, gt=0, description="Seconds a partition's committed offset may stand "
                                 "still while messages wait before the worker reads it again from there (logged; "
                                 "tagger_partition_restarts_total).")
    commit_interval: float = Field(3.0, gt=0, description="Seconds between offset commits; every customer "
                                   "changed since the last one is written to the changelog first, once "
                                   "(a drain of 20,000 customers wrote each ~5 times with 1 s).")
    commit_every: int = Field(0, ge=0, description="Also commit once this many records were handled since "
                              "the last commit; 0: only every commit_interval. (Faust's default, 10,000, "
                              "committed a two-worker 300,000-event drain every ~1.5 s: 157,000 changelog "
                              "records against 94,000 with commit_interval alone.)")
    session_timeout: float = Field(60.0, description="Kafka consumer group session timeout (s).")
    heartbeat_interval: float = Field(3.0, description="Kafka consumer heartbeat interval (s).")
    tansu_compat: bool = Field(
        False,
        description="Enable the changelog-highwater shim for the Tansu development broker, "
        "whose ListOffsets(LATEST) is wrong (see docs). Exact on real Kafka too, but slower.",
    )
    log_level: str = Field("info", description="Worker log level.")

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        """Refuse half-configured SASL or TLS at start-up rather than at the first connection."""
        if self.kafka_security_protocol.startswith("SASL") and not (
                self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(f"TAGGER_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                             "TAGGER_KAFKA_SASL_USERNAME and TAGGER_KAFKA_SASL_PASSWORD")
        tls_files = (self.redis_ssl_ca_certs, self.redis_ssl_certfile, self.redis_ssl_keyfile)
        if any(tls_files) and not self.redis_url.get_secret_value().startswith("rediss://"):
            raise ValueError("TAGGER_REDIS_SSL_* need a rediss:// REDIS_URL")
        return self

    @property
    def table_options(self) -> dict[str, int] | None:
        """Faust store options of the customers table: RocksDB's memory bounds (None: not RocksDB).

        Faust's defaults (3 x 64 MiB memtables and a 2 GiB block cache per partition) grow
        without a useful bound on a worker owning many partitions. A fresh dict each time:
        Faust's store pops keys from the one it gets.
        """
        if not self.store.startswith("rocksdb:"):
            return None
        mib = 1 << 20
        return {"write_buffer_size": self.rocksdb_write_buffer_mb * mib, "max_write_buffer_number": 2,
                "block_cache_size": self.rocksdb_block_cache_mb * mib}

    @property
    def broker_url(self) -> str:
        """Faust broker URL: ``kafka://h1:p1;h2:p2``."""
        hosts = [h.strip() for h in self.kafka_bootstrap_servers.split(",") if h.strip()]
        return ";".join(f"kafka://{h}" for h in hosts)

    @property
    def input_topics(self) -> dict[str, str]:
        """Input topic name → event kind."""
        return {self.orders_topic: "order", self.logins_topic: "login", self.tickets_topic: "ticket"}

    @property
    def keyed_topics(self) -> dict[str, str]:
        """Every customer-keyed input topic → kind (events, profiles, tag commands, privacy requests)."""
        return {**self.input_topics, self.profiles_topic: "profile", self.tag_commands_topic: "manual",
                self.privacy_requests_topic: "privacy"}

    @property
    def rekey_topic(self) -> str:
        """Internal topic that carries mis-keyed events to their customer's partition."""
        return f"{self.app_id}-rekey"

    @property
    def commands_topic(self) -> str:
        """Internal topic of per-partition commands (sweep, re-evaluate)."""
        return f"{self.app_id}-commands"


def env_names(field: str) -> tuple[str, ...]:
    """The environment variable names of one :class:`Settings` field, in the order Settings reads them."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (f"{Settings.model_config.get('env_prefix', '')}{field}".upper(),)


def environment_value(field: str) -> str | None:
    """The raw value the environment gives one :class:`Settings` field (None: not set, or empty).

    Unparsed and unvalidated, and the rest of the settings is not read: for a command
    that needs this one value and must work whatever the others are
    (``tagger rules validate`` reads ``TAGGER_RULES_DIR``; ``tagger dev`` starts its own
    broker and Redis unless ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` name them).
    Everything else reads :class:`Settings`.
    """
    for name in env_names(field):
        value = os.environ.get(name)
        if value:
            return value
    return None


def child_environment(overrides: Mapping[str, str] | None = None, *, drop: Iterable[str] = (),
                      drop_prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a child process: this process's, less ``drop`` and the names starting with one of
    ``drop_prefixes``, with ``overrides`` on top (a fresh dict the caller may change)."""
    dropped = frozenset(drop)
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith(drop_prefixes)}
    env.update(overrides or {})
    return env
