"""Exceptions raised by the ``stream`` package.

Everything derives from :class:`TaggerError`, so a caller can catch the whole
family in one place. Each docstring says what an operator should do when the
error shows up in logs, metrics or the dead-letter topic.
"""

from __future__ import annotations

__all__ = ["InvalidEvent", "StateDecodeError", "TaggerError"]


class TaggerError(Exception):
    """Root of every error the customer tagger raises on purpose.

    Operators: the message names what went wrong and where. An error of this
    family never means the broker or Redis is broken; it means a message, a
    stored value or the configuration is not what the tagger expects. Fix the
    named input (or the configuration) rather than restarting the service.
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
