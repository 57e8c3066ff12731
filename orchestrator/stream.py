"""The run state in Redis, on the driver's side: desired rollout / sandbox worker counts (`diffurl scale`), the
run's status and the workers' heartbeats. The trajectory stream itself is actors/stream.py's.
"""

from __future__ import annotations

import time

import redis

from actors.stream import _text

WORKER_ROLES = ("rollout", "sandbox")


class RunState:
    """Shared run state: desired rollout/sandbox worker counts (for `diffurl scale`), status, heartbeats."""

    def __init__(self, client: redis.Redis, run_id: str):
        self.client = client
        self.key = f"diffurl:{run_id}:state"
        self.heartbeat_key = f"diffurl:{run_id}:heartbeat"

    def set_desired_workers(self, n: int, role: str = "rollout") -> None:
        field_name = _desired_field(role)
        if n < 1:
            raise ValueError(f"desired {role} workers must be >= 1, got {n}")
        self.client.hset(self.key, field_name, n)

    def desired_workers(self, role: str = "rollout") -> int | None:
        value = self.client.hget(self.key, _desired_field(role))
        return int(value) if value is not None else None

    def set_scale_note(self, note: str) -> None:
        """What the driver made of the last scale request it could not follow in full (`diffurl status` shows it)."""
        self.client.hset(self.key, "scale_note", note)

    def scale_note(self) -> str | None:
        value = self.client.hget(self.key, "scale_note")
        return _text(value) if value is not None else None

    def set_status(self, status: str) -> None:
        self.client.hset(self.key, "status", status)

    def status(self) -> str | None:
        value = self.client.hget(self.key, "status")
        return _text(value) if value is not None else None

    def heartbeat(self, worker_id: str, now: float | None = None) -> None:
        self.client.hset(self.heartbeat_key, worker_id, repr(time.time() if now is None else now))

    def heartbeats(self) -> dict[str, float]:
        """worker id -> unix time of its last heartbeat."""
        return {_text(k): float(v) for k, v in self.client.hgetall(self.heartbeat_key).items()}


def _desired_field(role: str) -> str:
    if role not in WORKER_ROLES:
        raise ValueError(f"worker role {role!r}: expected one of {', '.join(WORKER_ROLES)}")
    return f"desired_{role}_workers"
