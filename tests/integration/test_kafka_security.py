"""Kafka security end to end: real Apache Kafka with a SASL_SSL listener (SCRAM-SHA-512, TLS).

The module starts its own node (stream.devtools.kafka_local) and Redis, with a test CA and a broker certificate for
127.0.0.1/localhost made here by ``openssl``. Everything the tagger does goes through the SASL_SSL listener,
configured by the ``TAGGER_KAFKA_*`` settings alone: a worker creates its topics, consumes orders that
``tagger replay`` produced, publishes a tag change that ``tagger tail`` prints and that its webhook sink
delivers, and answers ``tagger reevaluate``; neither the worker nor ``tail`` holds a connection to any other
port of the node than the SASL_SSL listener's. A wrong password and a CA that
did not sign the broker's certificate each end the worker, ``tagger replay`` and ``tagger tail`` with exit
status 1 and a message naming the cause within seconds (the start-up preflight,
stream.kafka.kafka_admin.check_connection), not a hang.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.devtools.embedded import ServiceGroup, free_port, spawn, terminate
from stream.devtools.kafka_local import KafkaCluster, Listener, kafka_unavailable
from stream.kafka.kafka_admin import consume_all
from stream.security import librdkafka_config
from stream.settings import Settings

from .conftest import Worker, deployment_fields, wait_for

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice", "alice-Scram-512-secret"  # noqa: S105 - the test broker's SCRAM user
WRONG_PASSWORD = "not-alices-password"  # noqa: S105
MECHANISM = "SCRAM-SHA-512"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FAIL_WITHIN = 45.0  # seconds from launch to exit for a refused connection (interpreter start included, loaded CI)


@dataclass
class Certs:
    """PEM files: the CA that signed the broker's certificate, another CA, the broker's key and chain."""

    ca: Path
    other_ca: Path
    keystore: Path


def _openssl(*args: str | Path) -> None:
    out = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise AssertionError(f"openssl {' '.join(map(str, args[:2]))} failed:\n{out.stderr}")


def make_certs(directory: Path) -> Certs:
    """A test CA, a second CA, and a broker certificate for IP 127.0.0.1 and DNS localhost signed by the first."""
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=tagger test {name}",
                 "-keyout", directory / f"{name}.key", "-out", directory / f"{name}.pem")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", directory / "broker.key", "-out", directory / "broker.csr")
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-days", "2", "-in", directory / "broker.csr", "-CA", directory / "ca.pem",
             "-CAkey", directory / "ca.key", "-CAcreateserial", "-extfile", directory / "san.cnf",
             "-out", directory / "broker.pem")
    keystore = directory / "broker-keystore.pem"  # Kafka's PEM keystore: the PKCS#8 key, then the chain
    keystore.write_text("".join((directory / f).read_text() for f in ("broker.key", "broker.pem", "ca.pem")))
    return Certs(directory / "ca.pem", directory / "other-ca.pem", keystore)


@dataclass
class SecureKafka:
    """The node with its SASL_SSL listener ``SECURE``, and a Redis."""

    services: ServiceGroup
    cluster: KafkaCluster
    certs: Certs

    @property
    def bootstrap(self) -> str:
        return self.cluster.listener_bootstrap("SECURE")

    @property
    def secure_ports(self) -> set[int]:
        return {node.listener_ports["SECURE"] for node in self.cluster.nodes}

    @property
    def all_ports(self) -> set[int]:
        """Every port of the node: PLAINTEXT (clients and brokers), CONTROLLER and SECURE."""
        return {port for node in self.cluster.nodes
                for port in (node.port, node.controller_port, *node.listener_ports.values())}


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    why = kafka_unavailable()
    if why:
        pytest.skip(f"needs real Apache Kafka: {why}")
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make the test CA and broker certificate")
    certs = make_certs(tmp_path_factory.mktemp("kafka-certs"))
    listener = Listener("SECURE", "SASL_SSL", config={
        "sasl.enabled.mechanisms": MECHANISM,
        f"{MECHANISM.lower()}.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(certs.keystore),
    })
    cluster = KafkaCluster(1, listeners=[listener], scram_users=[f"{MECHANISM}=[name={USER},password={PASSWORD}]"])
    with ServiceGroup(broker=cluster) as services:
        yield SecureKafka(services, cluster, certs)


def tagger_fields(secure: SecureKafka, uid: str, **overrides: Any) -> dict[str, Any]:
    """Settings of one isolated deployment on the secure listener (unique topics, group and Redis prefix)."""
    fields: dict[str, Any] = dict(
        kafka_bootstrap_servers=secure.bootstrap, redis_url=secure.services.redis_url,
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism=MECHANISM, kafka_sasl_username=USER,
        kafka_sasl_password=PASSWORD, kafka_ssl_cafile=str(secure.certs.ca),
        **deployment_fields(uid), partitions=2, webhook_dead_letters_topic=f"webhook-dead-letters-{uid}",
    )
    return {**fields, **overrides}


def tagger_env(fields: dict[str, Any], tmp: Path) -> dict[str, str]:
    """The environment of a tagger process: TAGGER_* settings only (none inherited from ours)."""
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("TAGGER_", "KAFKA_")) and k != "REDIS_URL"}
    return {**inherited, "TAGGER_DATADIR": str(tmp / f"data-{uuid.uuid4().hex[:6]}"),
            **{f"TAGGER_{k.upper()}": str(v) for k, v in fields.items()}}


class Hooks:
    """A local webhook endpoint that records every POSTed body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                hooks.bodies.append(orjson.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def orders_file(path: Path, customer: str) -> Path:
    """Two orders, 6,000 and 5,000.50: the customer becomes a big_spender (spend >= 10,000)."""
    rows = [{"customer_id": customer, "event_id": f"{customer}-{i}", "ts": T0 + i * 86_400_000, "amount": amount,
             "currency": "USD"} for i, amount in enumerate((6000, 5000.50), start=1)]
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def tagger(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agents", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def remote_ports(pid: int) -> set[int]:
    """Remote ports of the process's established TCP connections (Linux /proc: its sockets' inodes)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:  # closed meanwhile (the listing's own descriptor, for one)
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()  # sl local_address rem_address st ... inode (the tenth)
            if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def test_worker_replay_tail_and_webhooks_over_sasl_ssl(secure: SecureKafka, tmp_path: Path) -> None:
    uid, customer = uuid.uuid4().hex[:8], "c-secure"
    hooks = Hooks()
    webhooks = tmp_path / "webhooks.yaml"
    webhooks.write_text(f"webhooks:\n  - name: secure\n    url: http://127.0.0.1:{hooks.port}/hook\n"
                        "    tags: [big_spender]\n")
    fields = tagger_fields(secure, uid, webhooks_file=str(webhooks))
    settings = Settings(**fields)
    port = free_port()
    worker = Worker(tagger_env({**fields, "web_port": port}, tmp_path), tmp_path / "worker.log", port)
    tail = None
    try:
        worker.start()  # creates its topics through SASL_SSL (no topic exists before)
        started = time.monotonic()
        replay = tagger(tagger_env(fields, tmp_path), "replay", str(orders_file(tmp_path / "orders.jsonl", customer)),
                        "--kind", "orders", "--no-progress")
        assert replay.returncode == 0, replay.stderr + replay.stdout
        assert "rows read 2, sent 2, rejected 0, failed 0" in replay.stdout

        def big_spender(records: list[dict[str, Any]]) -> bool:
            return any(r["key"] == customer and "big_spender" in r["value"]["added"] for r in records)

        changes = consume_all(librdkafka_config(settings), settings.tag_changes_topic, timeout=90, until=big_spender)
        assert big_spender(changes), f"no big_spender tag change; got {changes[-3:]}\n{worker.log()}"
        print(f"replay to tag change over SASL_SSL: {time.monotonic() - started:.1f}s")

        tail_log = tmp_path / "tail.log"
        tail = spawn([sys.executable, "-m", "agents", "tail", "--no-churn"], env=tagger_env(fields, tmp_path),
                     log_path=tail_log)
        wait_for(lambda: f"{customer}" in tail_log.read_text() and "+big_spender" in tail_log.read_text()
                 or tail.poll() is not None, 90, "tagger tail to print the tag change")
        assert tail.poll() is None, f"tagger tail exited with {tail.returncode}:\n{tail_log.read_text()}"

        wait_for(lambda: any(b["data"].get("customer_id") == customer and "big_spender" in b["data"].get("added", [])
                             for b in hooks.bodies), 90, "the webhook sink to deliver the tag change")

        reevaluate = tagger(tagger_env(fields, tmp_path), "reevaluate", "--timeout", "60")  # commands topic
        assert reevaluate.returncode == 0, reevaluate.stderr + reevaluate.stdout

        # every Kafka connection of the worker and of tail is to the SASL_SSL listener
        for name, pid in (("worker", worker.proc.pid), ("tail", tail.pid)):
            ports = remote_ports(pid) & secure.all_ports
            assert ports == secure.secure_ports, f"{name}: connections to the node's ports {ports}, " \
                f"only {secure.secure_ports} (SASL_SSL) expected"
        log = (tmp_path / "worker.log").read_text(errors="replace")
        for trouble in ("Unable connect", "SaslAuthenticationFailed", "could not read committed offsets",
                        "could not probe partitions", "webhook sink failed", "Traceback"):
            assert trouble not in log, f"worker log has {trouble!r}:\n{worker.log()}"
        assert PASSWORD not in log
    finally:
        if tail is not None:
            terminate(tail)
        worker.stop()
        hooks.server.shutdown()
        hooks.server.server_close()


@pytest.mark.parametrize(("case", "expected"), [
    ("wrong password", "Error: Kafka authentication failed at "),
    ("untrusted certificate", "Error: Kafka TLS certificate verification failed at "),
], ids=["wrong-password", "untrusted-ca"])
def test_refused_connection_fails_fast_with_a_clear_message(secure: SecureKafka, tmp_path: Path, case: str,
                                                            expected: str) -> None:
    bad = {"kafka_sasl_password": WRONG_PASSWORD} if case == "wrong password" else {
        "kafka_ssl_cafile": str(secure.certs.other_ca)}
    fields = tagger_fields(secure, uuid.uuid4().hex[:8], web_port=free_port(), **bad)
    history = orders_file(tmp_path / "orders.jsonl", "c-refused")
    commands = {"worker": ["worker"], "replay": ["replay", str(history), "--kind", "orders", "--no-progress"],
                "tail": ["tail"]}
    started = time.monotonic()
    procs = {name: subprocess.Popen([sys.executable, "-m", "agents", *args], env=tagger_env(fields, tmp_path),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in commands.items()}
    try:
        for name, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{case}: tagger {name} still running after 120s (a hang)") from None
            took = time.monotonic() - started
            print(f"{case}: tagger {name} exited {proc.returncode} after {took:.1f}s: {err.strip()[:400]}")
            assert proc.returncode == 1, f"{case}: tagger {name} exited {proc.returncode}:\n{err}\n{out}"
            assert expected in err, f"{case}: tagger {name}:\n{err}"
            assert "Traceback" not in err and WRONG_PASSWORD not in err + out and PASSWORD not in err + out
            assert took < FAIL_WITHIN, f"{case}: tagger {name} took {took:.1f}s to fail"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
