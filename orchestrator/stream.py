"""The trajectory stream (Redis Streams) and the run state in Redis.

Rollout workers `publish` one `Trajectory` (actors/trajectory.py) per scored prompt group; the learner
`read`s them through a consumer group and the driver `ack`s them only after the step that consumed them
is checkpointed. A consumer that restarts under the same name first gets back its delivered-but-
unacknowledged entries, so a crash replays groups and never loses them.

Records are JSON: a lossless round trip for nested dicts (string keys) and lists of ints, floats (exact),
strings, bools and None. NaN and infinities are rejected at `publish` (a NaN reward is a bug upstream).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import redis

from actors.trajectory import Trajectory
from orchestrator.redis_server import connect

RECORD_FIELD = b"data"


def encode_record(record: dict) -> bytes:
    _check_json_safe(record, "record")
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


def decode_record(data: bytes) -> dict:
    return json.loads(data)


class TrajectoryStream:
    """Redis stream `diffurl:{run_id}:traj` with a consumer group (default `learner`)."""

    def __init__(self, client_or_url: redis.Redis | str, run_id: str, group: str = "learner",
                 maxlen: int = 100_000):
        self.client = connect(client_or_url) if isinstance(client_or_url, str) else client_or_url
        self.key = f"diffurl:{run_id}:traj"
        self.group = group
        self.maxlen = maxlen
        self._replay_from: dict[str, str] = {}  # consumer -> last pending id replayed ("0" before the first)
        try:
            self.client.xgroup_create(self.key, group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def publish(self, trajectory: Trajectory) -> str:
        """XADD one trajectory; returns its entry id. Entries beyond `maxlen` (approximately) are trimmed."""
        entry_id = self.client.xadd(self.key, {RECORD_FIELD: encode_record(trajectory.to_dict())},
                                    maxlen=self.maxlen, approximate=True)
        return _text(entry_id)

    def read(self, count: int, consumer: str, block_ms: int | None = None,
             replay: bool = True) -> list[tuple[str, Trajectory]]:
        """Up to `count` entries for `consumer`: first its unacknowledged ones (replay), then new ones.

        `block_ms`: None returns at once; a number waits up to that long for new entries when none are ready.
        `replay=False` skips the unacknowledged ones: a consumer that still holds them (consumed, waiting for
        the checkpoint that acknowledges them) must not get them twice.
        """
        entries = self._replay(count, consumer) if replay else []
        if len(entries) < count:
            block = block_ms if not entries else None
            reply = self.client.xreadgroup(self.group, consumer, {self.key: ">"}, count=count - len(entries),
                                           block=block)
            entries += self._decode(reply)
        return entries

    def ack(self, entry_ids: list[str]) -> int:
        """Acknowledge consumed entries; returns how many were pending."""
        if not entry_ids:
            return 0
        return int(self.client.xack(self.key, self.group, *entry_ids))

    def depth(self) -> int:
        """Entries not yet acknowledged: never delivered + delivered and pending."""
        info = next(g for g in self.client.xinfo_groups(self.key) if _text(g["name"]) == self.group)
        lag = info.get("lag")
        if lag is None:  # Redis < 7 or a trimmed stream: count the entries after the last delivered id
            lag = len(self.client.xrange(self.key, min="(" + _text(info["last-delivered-id"]), max="+"))
        return int(lag) + int(info["pending"])

    def entries(self, batch: int = 500):
        """Every entry still in the stream, oldest first, as (entry id, Trajectory) (used on resume)."""
        start = "-"
        while True:
            chunk = self.client.xrange(self.key, min=start, max="+", count=batch)
            for entry_id, fields in chunk:
                yield _text(entry_id), Trajectory.from_dict(decode_record(fields[RECORD_FIELD]))
            if len(chunk) < batch:
                return
            start = "(" + _text(chunk[-1][0])

    def _replay(self, count: int, consumer: str) -> list[tuple[str, dict]]:
        start = self._replay_from.setdefault(consumer, "0")
        if start == "":  # replay finished for this consumer
            return []
        reply = self.client.xreadgroup(self.group, consumer, {self.key: start}, count=count)
        raw = reply[0][1] if reply else []
        if not raw:
            self._replay_from[consumer] = ""
            return []
        self._replay_from[consumer] = _text(raw[-1][0])
        return self._decode(reply)

    def _decode(self, reply) -> list[tuple[str, dict]]:
        out = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                entry_id = _text(entry_id)
                if not fields:  # trimmed away while pending: nothing to train on, never delivered again
                    self.ack([entry_id])
                    continue
                out.append((entry_id, Trajectory.from_dict(decode_record(fields[RECORD_FIELD]))))
        return out


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


def _check_json_safe(value: Any, path: str) -> None:
    """Raise ValueError naming the path of anything JSON would not round-trip exactly."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}={value}: NaN and infinities are not allowed in a trajectory record")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_safe(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{path}: key {k!r} is a {type(k).__name__}; record keys must be strings")
            _check_json_safe(item, f"{path}.{k}")
        return
    raise ValueError(f"{path}: {type(value).__name__} is not allowed in a trajectory record "
                     "(use dicts, lists, int, float, str, bool, None)")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
