"""`diffurl status RUN`: where a run stands, live from its Redis and from its run directory.

    diffurl status runs/demo-20250101-120000

The run directory holds `run.json` (written by the driver: run id, Redis URL, status, driver pid), the
resolved `config.yaml` and `metrics.jsonl`. Redis holds what only a live run knows: its status, the desired
worker counts (`diffurl scale`), worker heartbeats and the trajectory stream. When Redis does not answer
(the run ended and its embedded server stopped), the status says so and shows the run directory alone.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from orchestrator.errors import UserError
from orchestrator.metrics import read_metrics
from orchestrator.redis_server import connect, redact
from orchestrator.rundir import RunDir
from actors.stream import TrajectoryStream
from orchestrator.stream import WORKER_ROLES, RunState

ALIVE_WITHIN_S = 60.0  # a worker whose last heartbeat is older than this counts as not alive
LIVE = ("starting", "running")  # run.json statuses written while the driver runs
RUN_FILES = ("run.json", "config.yaml", "metrics.jsonl")  # a run directory has at least one


@dataclass
class RunStatus:
    run_dir: Path
    info: dict | None  # run.json, None when the driver has not written it
    total_steps: int | None  # run.steps of the resolved config
    last: dict | None  # the last metrics.jsonl row
    live: dict = field(default_factory=dict)  # from Redis: status, desired, alive, stream_depth
    redis_note: str = ""  # why there is no live state


def run_dir_arg(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run directory {run_dir}: not found; give a directory under run.root_dir, e.g. runs/demo-...")
    return path


def driver_gone(info: dict) -> str | None:
    """Why the run's driver is known to be dead although run.json says it runs (killed without a chance to write
    run.json), else None: only a driver of this host can be checked (its pid is no process any more)."""
    pid, host = info.get("driver_pid"), info.get("driver_host")
    if info.get("status") not in LIVE or not isinstance(pid, int) or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"its driver (pid {pid} on {host}) is gone, killed before it could record how the run ended"
    except PermissionError:  # a process of another user: alive
        pass
    return None


def resume_hint(run_dir: str | Path) -> str:
    return f"resume with: diffurl train --resume {run_dir}"


def load_run_info(run_dir: str | Path) -> dict:
    """`RUN/run.json` as a dict; UserError when it is missing, unreadable or lacks the run id."""
    path = RunDir(run_dir_arg(run_dir)).run_info
    if not path.is_file():
        raise UserError(f"run directory {run_dir}: no {path.name} (not a diffurl run, or its driver has not started)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), str):
        raise UserError(f"{path}: lacks the run_id")
    return info


def connect_run(info: dict, retries: int = 2) -> redis.Redis:
    """A client for the run's Redis; UserError naming the run and the (redacted) URL when it does not answer."""
    if not info.get("redis_url"):
        raise UserError(f"run {info['run_id']}: run.json has no redis_url yet (status {info.get('status')}); "
                        "try again once the run is running")
    try:
        return connect(info["redis_url"], retries=retries, delay_s=0.2)
    except UserError as e:
        raise UserError(f"run {info['run_id']}: {e} (has the run ended?)") from None


def collect_status(run_dir: str | Path, now: float | None = None) -> RunStatus:
    run_dir = run_dir_arg(run_dir)
    run = RunDir(run_dir)
    if not any((run_dir / name).is_file() for name in RUN_FILES):
        raise UserError(f"run directory {run_dir}: not a diffurl run (none of {', '.join(RUN_FILES)}); give a "
                        "directory under run.root_dir, e.g. runs/demo-...")
    info = load_run_info(run_dir) if run.run_info.is_file() else None
    rows = read_metrics(run_dir) if run.metrics.is_file() else []
    status = RunStatus(run_dir, info, _total_steps(run_dir), rows[-1] if rows else None)
    if info is None:
        status.redis_note = "no run.json in the run directory: live state unknown"
        return status
    if not info.get("redis_url"):
        status.redis_note = "run.json has no redis_url yet: live state unknown"
        return status
    try:
        client = connect_run(info)
    except UserError as e:
        status.redis_note = f"{e}; showing the run directory only"
        return status
    try:
        status.live = _live_state(client, info["run_id"], time.time() if now is None else now)
    except redis.exceptions.RedisError as e:  # went away between PING and the reads
        status.redis_note = (f"redis at {redact(info['redis_url'])} failed mid-read ({e}); "
                             "showing the run directory only")
    finally:
        client.close()
    return status


def _live_state(client: redis.Redis, run_id: str, now: float) -> dict:
    state = RunState(client, run_id)
    alive: dict[str, int] = {}
    for worker, beat in state.heartbeats().items():
        role = worker.rsplit("-", 1)[0]
        alive.setdefault(role, 0)
        alive[role] += int(now - beat <= ALIVE_WITHIN_S)
    live = {"status": state.status(), "desired": {r: state.desired_workers(r) for r in WORKER_ROLES}, "alive": alive,
            "scale_note": state.scale_note()}
    if client.exists(f"diffurl:{run_id}:traj"):
        live["stream_depth"] = TrajectoryStream(client, run_id).depth()
    return live


def _total_steps(run_dir: Path) -> int | None:
    config = RunDir(run_dir).config
    if not config.is_file():
        return None
    from omegaconf import OmegaConf

    steps = OmegaConf.select(OmegaConf.load(config), "run.steps")
    return int(steps) if steps is not None else None


def format_status(st: RunStatus, now: float | None = None) -> str:
    now = time.time() if now is None else now
    info, last, live = st.info or {}, st.last or {}, st.live
    lines = [f"run        {info.get('run_id', st.run_dir.name)}  ({st.run_dir})"]
    gone = driver_gone(info)
    if gone:  # whatever its Redis (which can outlive the driver) still says
        lines.append(f"status     dead: {gone}; {resume_hint(st.run_dir)}")
    elif live.get("status"):
        lines.append(f"status     {live['status']} (redis)")
    elif info:
        age = f", updated {now - info['updated']:.0f} s ago" if isinstance(info.get("updated"), (int, float)) else ""
        lines.append(f"status     {info.get('status', 'unknown')} (run.json{age})")
    if info.get("error"):
        lines.append(f"error      {info['error']}")
    total = f"/{st.total_steps}" if st.total_steps else ""
    lines.append(f"step       {last.get('step', 0)}{total}" + ("" if last else "  (no metrics logged yet)"))
    if last:
        lines.append(f"reward     {_num(last.get('reward_mean'))} (std {_num(last.get('reward_std'))})   "
                     f"pass rate {_num(last.get('pass_rate'))}")
    roles = sorted(set(live.get("alive", {})) | {r for r, n in live.get("desired", {}).items() if n is not None})
    if roles:
        parts = []
        for role in roles:
            desired = live["desired"].get(role)
            parts.append(f"{role} {live['alive'].get(role, 0)} alive" + (f" / {desired} desired" if desired else ""))
        lines.append("workers    " + ", ".join(parts) + f"  (alive: heartbeat within {ALIVE_WITHIN_S:.0f} s)")
    if live.get("scale_note"):
        lines.append(f"scaling    {live['scale_note']}")
    if "stream_depth" in live:
        lines.append(f"stream     depth {live['stream_depth']} (redis)")
    elif last.get("stream_depth") is not None:
        lines.append(f"stream     depth {last['stream_depth']:g} at step {last['step']}")
    if last:
        lines.append(f"staleness  mean {_num(last.get('staleness'))}, max {_num(last.get('staleness_max'))}")
        phases = [f"{k.removeprefix('time_')} {v:.2f}s" for k, v in last.items()
                  if k.startswith("time_") and isinstance(v, (int, float))]
        if phases:
            lines.append("phases     " + ", ".join(phases))
    if st.redis_note:
        lines.append(f"note       {st.redis_note}")
    return "\n".join(lines)


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def status_command(run_dir: str) -> int:
    """`diffurl status RUN`."""
    print(format_status(collect_status(run_dir)))
    return 0
