"""`diffurl scale RUN --rollout-workers N [--sandbox-workers M]`: change a live run's worker counts.

Writes the desired counts into the run's Redis (`RunState`); the driver adds or retires workers between
groups, so no work is lost. The run directory's `run.json` says where that Redis is.
"""
from __future__ import annotations

from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.ops.status import connect_run, driver_gone, load_run_info, resume_hint
from orchestrator.stream import RunState

ENDED = ("finished", "failed", "stopped")


def scale_run(run_dir: str | Path, rollout_workers: int | None = None,
              sandbox_workers: int | None = None) -> dict[str, int]:
    """Set the desired counts given (each >= 1); returns {role: count} as now stored in Redis."""
    wanted = {role: n for role, n in (("rollout", rollout_workers), ("sandbox", sandbox_workers)) if n is not None}
    if not wanted:
        raise UserError("scale: nothing to change; give --rollout-workers N and/or --sandbox-workers N")
    for role, n in wanted.items():
        if n < 1:
            raise UserError(f"--{role}-workers={n}: must be an integer >= 1")
    info = load_run_info(run_dir)
    if info.get("status") in ENDED:  # known from run.json: no need to ask its Redis, which has gone with it
        raise UserError(f"run {info['run_id']}: status is {info['status']}; only a running run can be scaled"
                        + ("" if info["status"] == "finished" else f" ({resume_hint(run_dir)})"))
    gone = driver_gone(info)
    if gone:
        raise UserError(f"run {info['run_id']}: {gone}; only a running run can be scaled ({resume_hint(run_dir)})")
    client = connect_run(info)
    try:
        state = RunState(client, info["run_id"])
        status = state.status()
        if status in ENDED:
            raise UserError(f"run {info['run_id']}: status is {status}; only a running run can be scaled")
        for role, n in wanted.items():
            state.set_desired_workers(n, role=role)
        return {role: state.desired_workers(role) for role in wanted}
    finally:
        client.close()


def scale_command(run_dir: str, rollout_workers: int | None, sandbox_workers: int | None) -> int:
    """`diffurl scale RUN`: set the counts given and say when they apply."""
    counts = scale_run(run_dir, rollout_workers, sandbox_workers)
    print("desired " + ", ".join(f"{role} workers: {n}" for role, n in counts.items())
          + "; the driver applies them between groups (watch with `diffurl status RUN`)")
    return 0
