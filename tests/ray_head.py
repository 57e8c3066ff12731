"""A real `ray start --head` for tests: explicit ports, started in its own process group, stopped by pid."""
from __future__ import annotations

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
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def start_ray_head(*, num_cpus: int = 3, dashboard: bool = False, timeout_s: float = 90,
                   env: dict | None = None) -> RayHead:
    """`env`: extra environment for the head (and the readiness probe), e.g. RAY_AUTH_MODE=token + RAY_AUTH_TOKEN."""
    tmp_dir = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    gcs, metrics, dash = free_port(), free_port(), free_port()
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--num-cpus={num_cpus}",
           f"--metrics-export-port={metrics}", f"--include-dashboard={str(dashboard).lower()}",
           f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--node-manager-port={free_port()}",
           f"--object-manager-port={free_port()}", "--disable-usage-stats", f"--temp-dir={tmp_dir}"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    log = open(tmp_dir / "ray-head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(proc, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}" if dashboard else "", metrics, tmp_dir)
    deadline = time.monotonic() + timeout_s
    probe = [sys.executable, "-c", f"import ray; ray.init(address='{head.address}'); ray.shutdown()"]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}: see {log.name}")
        try:
            if subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0:
                return head
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
    head.stop()
    raise RuntimeError(f"ray head at {head.address} did not come up in {timeout_s}s")


def start_ray_worker(head: RayHead, *, num_cpus: int, resources: dict[str, float], timeout_s: float = 90) -> RayHead:
    """A worker raylet (`ray start --address=HEAD --block`) on this machine, with custom `resources` to tell it
    apart; stopped like the head. Returns once the cluster lists the new node alive."""
    import json

    tmp_dir = Path(tempfile.mkdtemp(prefix="rw-", dir="/tmp"))
    cmd = [RAY, "start", f"--address={head.address}", "--block", "--node-ip-address=127.0.0.1",
           f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}", f"--metrics-export-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--node-manager-port={free_port()}",
           f"--object-manager-port={free_port()}", "--disable-usage-stats"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = open(tmp_dir / "ray-worker.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = RayHead(proc, head.address, "", 0, tmp_dir)
    name = next(iter(resources))
    probe = [sys.executable, "-c", f"import ray; ray.init(address='{head.address}'); "
             f"import sys; sys.exit(0 if ray.cluster_resources().get('{name}') else 1)"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start (worker) exited with {proc.returncode}: see {log.name}")
        try:
            if subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0:
                return worker
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
    worker.stop()
    raise RuntimeError(f"ray worker with {resources} did not join {head.address} in {timeout_s}s")
