"""Exceptions raised by the ``stream`` package.

Everything derives from :class:`TaggerError`, so a caller can catch the whole
family in one place. Each docstring says what an operator should do when the
error shows up in logs, metrics or the dead-letter topic. The errors of one
module's own concern stay beside it (a builtin as second base where callers
caught that before); the family:

* :class:`TaggerError`

  * :class:`InvalidEvent`, :class:`StateDecodeError` (here): a message or a stored state
  * :class:`ChangelogWriteError` (here): the broker refused changelog writes
  * ``stream.access.auth.TokenConfigError``: the API tokens
  * ``stream.webhook_delivery.WebhookConfigError``: the webhooks file
  * ``stream.view.listing.BadParameter``, ``stream.view.redis_view.WalkExpired``: a customer-list query
  * ``stream.domain.history.RowError``, ``stream.domain.history.MappingError``: ``tagger replay`` input
  * ``stream.view.trend_store.TrendQueryError``: a bad ``from``/``to`` of ``GET /trends`` (a 400)
  * ``stream.kafka.kafka_admin.KafkaAdminError``: a topic or the connection at start-up
    (``PartitionMismatchError``, ``TopicConfigError``, ``KafkaAuthenticationError``,
    ``KafkaTLSError``)
  * ``stream.devtools.embedded.EmbeddedServiceError``: a dev-mode broker or Redis
    (``BinaryNotFoundError``, ``ServiceStartError``, ``stream.devtools.kafka_local.KafkaUnavailableError``)

The rules package has its own root, :class:`rules.exceptions.RulesError`.
"""

from __future__ import annotations

__all__ = ["ChangelogWriteError", "InvalidEvent", "StateDecodeError", "TaggerError"]


class TaggerError(Exception):
    """Root of every error the customer tagger raises on purpose.

    Operators: the message names what went wrong and where: a message, a stored
    value, an input file or the configuration that is not what the tagger
    expects, or (``KafkaAdminError``) a broker that refused the tagger's topics
    or credentials. Fix the named input, configuration or topic rather than
    restarting the service as it is.
    """


class InvalidEvent(TaggerError):
    """An input message broke the v1 wire contract and was not applied.

    The tagger sends the raw message, with its topic, partition, offset and
    :attr:`reason`, to the dead-letter topic and counts it; the stream keeps
    going. Operators: read ``reason`` (it names the field exactly, e.g.
    ``field 'amount': must be >= 0, got -5``) and fix the producer. Once fixed,
    the dead-lettered messages can be re-published to their source topic.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason: str = reason


class StateDecodeError(TaggerError):
    """A stored customer state (changelog or store value) could not be decoded.

    This means the changelog holds bytes this build did not write: a newer
    format version (roll the upgrade forward, not back), or corruption.
    Operators: check the tagger version that wrote the changelog; if it is
    genuinely corrupt, delete the affected key from the changelog topic so the
    customer's state is rebuilt from new events.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason: str = reason


class ChangelogWriteError(TaggerError, RuntimeError):
    """The broker refused or lost some writes of the customers table's changelog; no offset was committed.

    The offsets stay where they were, so the messages since the last commit are not lost: a
    worker that gets their partitions reads them again and applies them idempotently.
    Operators: if it repeats, the changelog topic is not writable (the broker's log names why:
    disk, ``max.message.bytes``, ACLs); fix that on the broker.
    """
