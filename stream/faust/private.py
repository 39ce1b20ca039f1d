"""Every private attribute of Faust, mode and aiokafka that the tagger reads, writes or replaces.

The modules of this package reach into those libraries' internals (the consumer's offset
bookkeeping, its drain loop, the aiokafka client under Faust's consumer thread, the
producer's timeouts). None of that is a public API: a new version may rename or drop any
of it without notice, and the patch that relied on it would then fail at run time, or
silently do nothing. This module names each one, and the versions they were checked
against; tests/unit/test_faust_private.py fails when an installed version differs from
:data:`TESTED` or an entry of :data:`PRIVATE` is gone, so an upgrade breaks in one place.

To upgrade: check every entry here against the new version's source (does it still exist,
and does it still mean what the module using it assumes?), then update ``TESTED_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TESTED_FAUST = "0.15.3"
TESTED_MODE = "0.7.1"
TESTED_AIOKAFKA = "0.14.0"

#: (distribution name, the version every entry below was checked against)
TESTED: tuple[tuple[str, str], ...] = (
    ("faust-streaming", TESTED_FAUST),
    ("mode-streaming", TESTED_MODE),
    ("aiokafka", TESTED_AIOKAFKA),
)

Kind = Literal["class", "instance", "module"]
"""Where the attribute lives: ``class``, on the class or a base (a method we call or replace);
``instance``, set on each instance by the class's own code (``self.<name> = ...``);
``module``, a global of the module named by ``owner``."""


@dataclass(frozen=True)
class Private:
    """One attribute of a library's class (or module) that our code uses."""

    owner: str  # dotted path of the class (of the module, for kind "module") as the library defines it
    name: str
    kind: Kind
    used_by: tuple[str, ...]  # our modules that use it
    use: str  # how: "calls", "reads", "writes" or "replaces" (with our function in its place)


_APP = "stream.faust.app"
_INTAKE = "stream.faust.intake"
_GUARDS = "stream.faust.guards"
_OFFSETS = "stream.faust.offsets"
_TANSU = "stream.faust.tansu"

_CONSUMER = "faust.transport.consumer.Consumer"
_DRIVER_CONSUMER = "faust.transport.drivers.aiokafka.Consumer"
_CONSUMER_THREAD = "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread"
_PRODUCER = "faust.transport.drivers.aiokafka.Producer"

PRIVATE: tuple[Private, ...] = (
    # Faust's consumer: the methods patched or called
    Private(_CONSUMER, "_new_offset", "class", (_GUARDS,), "replaces (guards 3, 4)"),
    Private(_CONSUMER, "_commit_offsets", "class", (_GUARDS,), "replaces (guard 5)"),
    Private(_CONSUMER, "_drain_messages", "class", (_INTAKE,), "replaces (the batch intake)"),
    Private(_CONSUMER, "_wait_next_records", "class", (_INTAKE,), "calls"),
    Private(_CONSUMER, "_get_active_partitions", "class", (_GUARDS,), "calls (restart_partition)"),
    # Faust's consumer: its offset and flow bookkeeping
    Private(_CONSUMER, "_acked", "instance", (_INTAKE, _GUARDS, _OFFSETS), "reads, writes"),
    Private(_CONSUMER, "_acked_index", "instance", (_INTAKE, _GUARDS, _OFFSETS), "reads, writes"),
    Private(_CONSUMER, "_committed_offset", "instance", (_INTAKE, _GUARDS, _OFFSETS), "reads, writes"),
    Private(_CONSUMER, "_read_offset", "instance", (_INTAKE, _GUARDS), "reads, writes"),
    Private(_CONSUMER, "_gap", "instance", (_GUARDS,), "reads, writes"),
    Private(_CONSUMER, "_n_acked", "instance", (_INTAKE,), "reads, writes"),
    Private(_CONSUMER, "_commit_every", "instance", (_INTAKE,), "reads"),
    Private(_CONSUMER, "_unacked_messages", "instance", (_INTAKE, _GUARDS), "writes"),
    Private(_CONSUMER, "_waiting_for_ack", "instance", (_INTAKE,), "reads (and resolves the future)"),
    Private(_CONSUMER, "_buffered_partitions", "instance", (_INTAKE, _GUARDS), "reads, writes"),
    Private(_CONSUMER, "_paused_partitions", "instance", (_GUARDS,), "writes"),
    Private(_CONSUMER, "_active_partitions", "instance", (_GUARDS,), "reads"),
    # Faust's aiokafka driver: its consumer and the thread running aiokafka's consumer
    Private(_DRIVER_CONSUMER, "_commit", "class", (_GUARDS,), "replaces (guard 5)"),
    Private(_DRIVER_CONSUMER, "_to_message", "class", (_INTAKE,), "calls"),
    Private(_DRIVER_CONSUMER, "_thread", "instance", (_GUARDS,), "reads"),
    Private(_CONSUMER_THREAD, "_highwaters", "class", (_TANSU,), "replaces"),
    Private(_CONSUMER_THREAD, "_create_worker_consumer", "class", (_TANSU,), "replaces"),
    Private(_CONSUMER_THREAD, "_ensure_consumer", "class", (_GUARDS,), "calls"),
    Private(_CONSUMER_THREAD, "_consumer", "instance", (_GUARDS,), "reads"),
    # Faust's aiokafka driver: its producer
    Private(_PRODUCER, "_new_producer", "class", (_GUARDS,), "replaces (guard 8)"),
    Private(_PRODUCER, "_ensure_producer", "class", (_APP, _GUARDS), "calls"),
    # Faust's app, table and streams
    Private("faust.app.base.App", "_producer_flush", "class", (_GUARDS,), "replaces (guard 7)"),
    Private("faust.tables.table.Table", "_to_key", "class", (_APP,), "calls"),
    Private("faust.streams", "_current_event", "module", (_APP,), "reads, writes (sets the current event)"),
    # mode: the service under Faust's consumer and fetcher
    Private("mode.services.Service", "_stopped", "instance", (_INTAKE,), "reads"),
    # aiokafka: the consumer under Faust's consumer thread, the producer under Faust's producer
    Private("aiokafka.consumer.consumer.AIOKafkaConsumer", "_fetch_max_wait_ms", "instance", (_TANSU,),
            "reads, writes"),
    Private("aiokafka.consumer.consumer.AIOKafkaConsumer", "_subscription", "instance", (_GUARDS,), "reads"),
    Private("aiokafka.consumer.consumer.AIOKafkaConsumer", "_coordinator", "instance", (_GUARDS,), "reads"),
    Private("aiokafka.producer.producer.AIOKafkaProducer", "_sender", "instance", (_GUARDS,), "reads"),
    Private("aiokafka.client.AIOKafkaClient", "_request_timeout_ms", "instance", (_GUARDS,), "writes (guard 8)"),
    Private("aiokafka.producer.sender.Sender", "_request_timeout_ms", "instance", (_GUARDS,), "writes (guard 8)"),
)
"""Every private attribute of Faust, mode or aiokafka our code reads, writes or replaces."""

PUBLIC_REPLACED: tuple[Private, ...] = (
    Private(_CONSUMER, "ack", "class", (_GUARDS,), "replaces (guard 1)"),
    Private(_PRODUCER, "flush", "class", (_APP,), "replaces, on the app's producer (the changelog write-and-wait)"),
)
"""Public methods of Faust's that we replace rather than call: checked like :data:`PRIVATE`."""

OURS_ON_FAUST: tuple[Private, ...] = (
    Private("faust.app.base.App", "_tagger_intake", "instance", (_INTAKE,), "writes, reads (the app's intake)"),
    Private(_DRIVER_CONSUMER, "_tagger_failed_commit", "instance", (_GUARDS,),
            "writes, reads (guard 5: the offsets of a failed commit)"),
)
"""Attributes of ours set on Faust's objects: Faust must not have them (a new version that did would clash)."""
