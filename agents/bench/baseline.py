"""A do-nothing Faust agent: the benchmark's yardstick for Faust's own per-message cost.

Same app settings and source topics as the tagger worker (``stream.faust.app.create_app``),
but the agent only counts messages, so ``tagger bench`` can put the tagger's rate
next to what Faust itself reaches on the same machine in the same run. ``/readyz``
lets the bench wait until every worker of a group holds partitions before it times.
"""

from __future__ import annotations

from collections import Counter

import faust
from faust.web import Request, Response, View

from stream.faust.app import create_app
from stream.kafka.topics import declare_topics
from stream.settings import Settings


def build_baseline(settings: Settings) -> faust.App:
    """The app with one agent that reads the tagger's source topics and does nothing."""
    app = create_app(settings)
    topics = declare_topics(app, settings)
    outcomes: Counter[str] = Counter()

    @app.agent(topics.source)
    async def noop(stream: faust.StreamT) -> None:
        async for _ in stream.events():
            outcomes["ok"] += 1

    @app.page("/stats")
    async def stats(web: View, request: Request) -> Response:
        return web.json({"outcomes": dict(outcomes)})

    @app.page("/readyz")
    async def readyz(web: View, request: Request) -> Response:
        """200 once this worker holds partitions and no rebalance is under way (the bench waits for it)."""
        owned = len(app.consumer.assignment())
        ready = owned > 0 and not app.rebalancing
        return web.json({"topic_partitions_assigned": owned, "rebalancing": bool(app.rebalancing)},
                        status=200 if ready else 503)

    return app
