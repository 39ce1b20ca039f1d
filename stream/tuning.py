"""The fixed values an operator may need to tune, in one place, each with why it is what it is.

These are not settings: each bounds a loop, a wait or a buffer inside the worker, the
value here is the one the tests, the fault suite and the benchmark ran with, and a
change needs a new benchmark run (``tagger bench``) rather than an environment variable.
What is configured per deployment is in :mod:`stream.settings` (``TAGGER_*``).

Where each is used: the intake (:mod:`stream.faust.intake`), the Faust guards
(:mod:`stream.faust.guards`), the gap filler (:mod:`stream.faust.offsets`), the app factory
(:func:`stream.faust.app.create_app`) and the runtime's coalescing (:mod:`agents.engine.runtime`).
Those modules import the names from here, so a test may still patch the name in the module that uses it.
"""

from __future__ import annotations

from typing import Final

# --- intake (stream/faust/intake.py): urgent records among those fetched meanwhile --------------

#: Seconds between two looks at what aiokafka fetched while a fetch is handled, each record tested
#: for urgency (big orders, complaints). Lower: urgent records wait less behind a fetch, more CPU.
TOP_UP_EVERY: Final = 0.01
#: The look above happens only while fewer records than this are known to be behind (in hand
#: and not fetched yet). In a backlog an urgent record is fetched only shortly before its turn
#: anyway, and testing every record for urgency cost ~5% of a 300,000-event drain.
TOP_UP_BELOW: Final = 20_000

# --- Faust guards (stream/faust/guards.py) ------------------------------------------------------

#: Seconds a rebalance or a stop waits for the producer flush (the changelog write-and-wait) before
#: giving up (guard 7). Nothing is committed on that path, so giving up loses nothing: the messages
#: are applied again, idempotently, wherever their partitions go. Raise it if a worker's changelog
#: writes routinely take longer at a rebalance (logged "producer flush not done after N s").
FLUSH_TIMEOUT: Final = 30.0
#: Seconds a producer connection's set-up or a request's response may take before the connection is
#: dropped and the batch retried on a new one (guard 8; Faust's own value is 1,200 s). Delivery
#: itself keeps Faust's horizon, so a long broker outage still loses nothing.
REQUEST_TIMEOUT: Final = 30.0

# --- offset continuity (stream/faust/offsets.py): the gap filler's reads ----------------------

#: Seconds one try of the gap filler's side reads may take (a partition's committed offset, a gap's
#: records) before it is dropped with its side consumer and tried again on a new one. A connection gone
#: silent costs one try: in the fault suite's silent-connection scenario each worker's first lookup
#: after the silence waited this long once.
GAP_READ_ATTEMPT: Final = 15.0

# --- the agent's pipeline (agents/engine/pipeline/coalesce.py): coalesced evaluations
# ---------------------------------------

#: Waiting (coalesced) evaluations run per message (~5-10 ms), so that no message waits behind
#: thousands of them; the rest run after the next messages or from the flush timer.
DEFERRED_SLICE: Final = 64

# --- Faust app (stream/faust/app.py: create_app) ----------------------------------------------

#: Seconds the producer waits to fill a batch before sending it (Faust's ``producer_linger``).
#: Adds at most this much to every tag change's latency; 0 sends each record on its own.
PRODUCER_LINGER: Final = 0.005
#: Largest produce request, bytes (``producer_max_request_size``); as the librdkafka producers'
#: ``message.max.bytes`` (:data:`stream.kafka.kafka_admin.PRODUCER_DEFAULTS`). A broker still refuses a
#: record above its own ``message.max.bytes`` (topic: ``max.message.bytes``).
PRODUCER_MAX_REQUEST_SIZE: Final = 16 << 20
#: Bytes of one producer batch per partition (``producer_max_batch_size``). A full batch makes the next
#: send wait for the broker to take it: with aiokafka's 16 KB (~20 tag changes) a send cost 40-50 µs in
#: a drain, with 256 KB 17 µs.
PRODUCER_MAX_BATCH_SIZE: Final = 256 << 10
#: Bytes one fetch may return per partition (``consumer_max_fetch_size``): larger fetches mean
#: fewer round trips in a backlog and more memory per partition held.
CONSUMER_MAX_FETCH_SIZE: Final = 16 << 20
#: Messages a Faust stream buffers per topic partition (``stream_buffer_maxsize``; the
#: ``TAGGER_INTAKE=stream`` path and the changelogs): more absorbs bursts, costs memory.
STREAM_BUFFER_MAXSIZE: Final = 16384

# --- trends (agents/trends.py): when the trend timer looks at the stream clock ----------------

#: Seconds between two looks at the stream clock for a trend boundary passed. A point is recorded this
#: long after the clock passed its boundary at most (plus a view flush); the look is one GET.
TREND_CHECK_EVERY: Final = 2.0
