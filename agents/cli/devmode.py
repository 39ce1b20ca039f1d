"""``tagger dev``: broker, Redis, one worker and demo events on this machine, tag changes on screen.

If ``KAFKA_BOOTSTRAP_SERVERS`` is set, that Kafka is used instead of the
embedded broker, and likewise ``REDIS_URL`` for Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
from pathlib import Path

import click
import orjson

from agents.cli.console import tail_tag_changes
from stream.access.auth import hash_token, new_token
from stream.devtools.demo import DemoConfig, run_demo
from stream.devtools.embedded import RedisServer, TansuBroker, spawn, terminate, worker_env
from stream.kafka.topics import ensure_all_topics
from stream.settings import Settings, environment_value


async def _run(settings: Settings, customers: int, rate: float, stop: asyncio.Event) -> None:
    config = DemoConfig(customers=customers, rate=rate, currency=settings.currency)
    demo = asyncio.create_task(run_demo(settings.kafka_bootstrap_servers, config, stop=stop))
    try:
        await tail_tag_changes(settings, alerts=True, stop=stop)
    finally:
        stop.set()
        await demo


def run_dev(*, customers: int, rate: float, web_port: int) -> int:
    """Run until Ctrl-C; stop every child process; return an exit code."""
    given_bootstrap, given_redis = environment_value("kafka_bootstrap_servers"), environment_value("redis_url")
    broker = None if given_bootstrap else TansuBroker()
    redis = None if given_redis else RedisServer()
    workdir = Path(tempfile.mkdtemp(prefix="tagger-dev-"))
    proc = None
    try:
        if broker:
            broker.start()
        if redis:
            redis.start()
        bootstrap = broker.bootstrap if broker else str(given_bootstrap)  # not embedded: given
        redis_url = redis.url if redis else str(given_redis)
        env = worker_env(bootstrap, redis_url, web_port, workdir / "data", broker is not None)
        log_path = workdir / "worker.log"
        click.echo(click.style(f"broker {bootstrap}  redis {redis_url}  worker log {log_path}", dim=True))
        lookup = f"http://127.0.0.1:{web_port}/customers/cust-00001"
        if env.get("TAGGER_API_TOKENS") or env.get("TAGGER_API_TOKENS_FILE"):
            click.echo(click.style(f"customer lookup (with one of your tokens): {lookup}", dim=True))
            click.echo(click.style(f"dashboard: http://127.0.0.1:{web_port}/dashboard#token=<your token>", dim=True))
        else:  # a throw-away admin token for this session only, printed here and nowhere else
            token = new_token()
            env["TAGGER_API_TOKENS"] = orjson.dumps([{"name": "dev", "role": "admin",
                                                      "sha256": hash_token(token)}]).decode()
            click.echo(click.style(f"customer lookup: curl -H 'Authorization: Bearer {token}' {lookup}", dim=True))
            click.echo(click.style(f"dashboard: http://127.0.0.1:{web_port}/dashboard#token={token}", dim=True))
        settings = Settings(kafka_bootstrap_servers=bootstrap, redis_url=redis_url)  # type: ignore[call-arg]
        ensure_all_topics(settings)
        proc = spawn([sys.executable, "-m", "agents", "worker"], env=env, log_path=log_path)
        stop = asyncio.Event()
        loop = asyncio.new_event_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        with contextlib.closing(loop):
            loop.run_until_complete(_run(settings, customers, rate, stop))
        return 0
    finally:
        click.echo(click.style("stopping…", dim=True))
        if proc is not None:
            terminate(proc, grace=15.0)
        for service in (redis, broker):
            if service is not None:
                service.stop()
