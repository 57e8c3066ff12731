"""A real `ray start --head` for tests: explicit ports, started in its own process group, stopped by pid."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.redis_server import free_port

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class RayHead:
    proc: subprocess.Popen
    address: str          # 127.0.0.1:<gcs port>, for RAY_ADDRESS
    dashboard_url: str    # http://127.0.0.1:<dashboard port> ("" without a dashboard)
    metrics_port: int
    tmp_dir: Path

    def stop(self) -> None:
        """SIGTERM the `ray start --block` process (it stops what it started), then the whole group."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL every process of the node at once (raylet, its workers, in whatever process group): the
        node is lost, not stopped."""
        import psutil  # a dependency of ray

        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def start_ray_head(*, num_cpus: int = 3, dashboard: bool = False, timeout_s: float = 90,
                   env: dict | None = None, resources: dict | None = None) -> RayHead:
    """`env`: extra environment for the head (and the readiness probe), e.g. RAY_AUTH_MODE=token + RAY_AUTH_TOKEN;
    `resources`: custom resources of the head node."""
    tmp_dir = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    gcs, metrics, dash, client, *node = _ports(9)
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--num-cpus={num_cpus}",
           f"--metrics-export-port={metrics}", f"--include-dashboard={str(dashboard).lower()}",
           f"--dashboard-port={dash}", f"--ray-client-server-port={client}", *_node_ports(node),
           "--disable-usage-stats", f"--temp-dir={tmp_dir}"]
    cmd += [f"--resources={json.dumps(resources)}"] if resources else []
    address = f"127.0.0.1:{gcs}"
    head = _launch(cmd, {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}, tmp_dir, address,
                   f"ray head at {address}", f"import ray; ray.init(address='{address}'); ray.shutdown()", timeout_s)
    head.dashboard_url, head.metrics_port = f"http://127.0.0.1:{dash}" if dashboard else "", metrics
    return head


def _ports(n: int) -> list[int]:
    """`n` different free ports (free_port alone may hand out the same port twice)."""
    ports: list[int] = []
    while len(ports) < n:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def _node_ports(ports: list[int]) -> list[str]:
    """The flags of the 5 ports every raylet listens on."""
    flags = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
             "--node-manager-port", "--object-manager-port")
    return [f"{flag}={port}" for flag, port in zip(flags, ports, strict=True)]


def _launch(cmd: list[str], env: dict, tmp_dir: Path, address: str, what: str, probe: str,
            timeout_s: float) -> RayHead:
    """Run `cmd` (a `ray start --block`) and return once the Python `probe` exits 0. Started once more when
    Ray's fixed 30 s wait for its raylet ran out (a loaded 2-core machine); stopped when it never comes up."""
    for attempt in (1, 2):
        log = tmp_dir / f"ray-start-{attempt}.log"
        proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        node = RayHead(proc, address, "", 0, tmp_dir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                                  timeout=30).returncode == 0:
                    return node
            except subprocess.TimeoutExpired:
                pass
            time.sleep(1)
        if proc.poll() is None:
            node.stop()
            raise RuntimeError(f"{what} did not come up in {timeout_s}s")
        if attempt == 2 or "timed out during startup" not in log.read_text():
            raise RuntimeError(f"{what}: ray start exited with {proc.returncode}: see {log}")
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what the failed start left running
        except ProcessLookupError:
            pass


def start_ray_worker(head: RayHead, *, num_cpus: int, resources: dict[str, float], timeout_s: float = 90) -> RayHead:
    """A worker raylet (`ray start --address=HEAD --block`) on this machine, with custom `resources` to tell it
    apart; stopped like the head. Returns once the cluster lists the new node alive."""
    import json

    tmp_dir = Path(tempfile.mkdtemp(prefix="rw-", dir="/tmp"))
    metrics, *node = _ports(6)
    cmd = [RAY, "start", f"--address={head.address}", "--block", "--node-ip-address=127.0.0.1",
           f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}", f"--metrics-export-port={metrics}",
           *_node_ports(node), "--disable-usage-stats"]
    probe = (f"import ray, sys; ray.init(address='{head.address}'); want = {resources!r}; "
             "sys.exit(0 if any(n['Alive'] and all(n['Resources'].get(k) == v for k, v in want.items()) "
             "for n in ray.nodes()) else 1)")
    return _launch(cmd, {**os.environ, "RAY_AUTH_MODE": "disabled"}, tmp_dir, head.address,
                   f"ray worker with {resources} joining {head.address}", probe, timeout_s)
