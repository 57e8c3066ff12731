"""The trajectory stream (Redis Streams), the trajectory record, and the run state in Redis.

Rollout workers `publish` one record per scored prompt group; the learner `read`s them through a
consumer group and `ack`s them only after the step that consumed them is checkpointed. A consumer that
restarts under the same name first gets back its delivered-but-unacknowledged entries, so a crash
replays groups and never loses them; `claim_stale` moves entries from a dead consumer to a live one.

Records are JSON: a lossless round trip for nested dicts (string keys) and lists of ints, floats (exact),
strings, bools and None. NaN and infinities are rejected at `publish` (a NaN reward is a bug upstream).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from orchestrator.redis_server import connect

RECORD_FIELD = b"data"


@dataclass
class Trajectory:
    """One prompt group of G completions, scored: what the learner needs to train, token in, token out."""

    run_id: str
    group_id: str
    prompt_id: str  # the dataset task_id
    prompt_ids: list[int]  # [P] prompt token ids (after left truncation)
    completion_ids: list[list[int]]  # [G, K] sampled completion token ids
    completion_mask: list[list[int]]  # [G, K] 1 up to and including the first end token, then 0
    rewards: list[float]  # [G]
    reward_parts: list[dict]  # [G] {pass_rate, format, status, tests: per-test statuses}
    infra_errors: int  # sandbox jobs that failed for infrastructure reasons (never scored as 0)
    version_start: int  # policy version when decoding started
    version_end: int  # policy version when the group was published
    decode: dict = field(default_factory=dict)  # steps, max_new_tokens, alg, temperature, order [G, K],
    # local_arness, global_arness, tokens_per_step
    worker_id: str = ""
    timings: dict = field(default_factory=dict)  # seconds per phase, e.g. {"generate": 1.2, "reward": 0.3}
    texts: list[str] = field(default_factory=list)  # [G] decoded completions (empty: not recorded)

    def __post_init__(self):
        g = len(self.completion_ids)
        sizes = {"completion_mask": len(self.completion_mask), "rewards": len(self.rewards),
                 "reward_parts": len(self.reward_parts)}
        if self.texts:
            sizes["texts"] = len(self.texts)
        wrong = {k: n for k, n in sizes.items() if n != g}
        if wrong:
            raise ValueError(f"trajectory {self.group_id}: {wrong} must match the {g} rows of completion_ids")
        for i, (ids, mask) in enumerate(zip(self.completion_ids, self.completion_mask)):
            if len(ids) != len(mask):
                raise ValueError(f"trajectory {self.group_id}: completion_mask[{i}] has {len(mask)} entries, "
                                 f"completion_ids[{i}] has {len(ids)}")

    @property
    def group_size(self) -> int:
        return len(self.completion_ids)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> Trajectory:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - names)
        if unknown:
            raise ValueError(f"trajectory record has unknown fields {unknown}")
        return cls(**record)


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
        self.trimmed: list[str] = []  # pending ids whose entry was trimmed away before it was read
        try:
            self.client.xgroup_create(self.key, group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def publish(self, record: dict) -> str:
        """XADD one record; returns its entry id. Entries beyond `maxlen` (approximately) are trimmed."""
        entry_id = self.client.xadd(self.key, {RECORD_FIELD: encode_record(record)},
                                    maxlen=self.maxlen, approximate=True)
        return _text(entry_id)

    def read(self, count: int, consumer: str, block_ms: int | None = None,
             replay: bool = True) -> list[tuple[str, dict]]:
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

    def pending_count(self) -> int:
        """Entries delivered to some consumer and not yet acknowledged."""
        return int(self.client.xpending(self.key, self.group)["pending"])

    def depth(self) -> int:
        """Entries not yet acknowledged: never delivered + delivered and pending."""
        info = next(g for g in self.client.xinfo_groups(self.key) if _text(g["name"]) == self.group)
        lag = info.get("lag")
        if lag is None:  # Redis < 7 or a trimmed stream: count the entries after the last delivered id
            lag = len(self.client.xrange(self.key, min="(" + _text(info["last-delivered-id"]), max="+"))
        return int(lag) + int(info["pending"])

    def entries(self, batch: int = 500):
        """Every entry still in the stream, oldest first, as (entry id, record) (used on resume)."""
        start = "-"
        while True:
            chunk = self.client.xrange(self.key, min=start, max="+", count=batch)
            for entry_id, fields in chunk:
                yield _text(entry_id), decode_record(fields[RECORD_FIELD])
            if len(chunk) < batch:
                return
            start = "(" + _text(chunk[-1][0])

    def length(self) -> int:
        return int(self.client.xlen(self.key))

    def claim_stale(self, consumer: str, min_idle_ms: int, count: int = 100) -> list[tuple[str, dict]]:
        """Give `consumer` every entry pending for at least `min_idle_ms` on any consumer (XAUTOCLAIM)."""
        claimed: list[tuple[str, dict]] = []
        cursor = "0-0"
        while True:
            reply = self.client.xautoclaim(self.key, self.group, consumer, min_idle_ms, start_id=cursor, count=count)
            cursor, entries, deleted = parse_autoclaim(reply)
            claimed += self._decode([[self.key, entries]])
            self.trimmed += deleted
            if cursor == "0-0":
                return claimed

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
                    self.trimmed.append(entry_id)
                    self.ack([entry_id])
                    continue
                out.append((entry_id, decode_record(fields[RECORD_FIELD])))
        return out


def parse_autoclaim(reply) -> tuple[str, list, list[str]]:
    """(next cursor, [(id, fields)], deleted ids) from XAUTOCLAIM: 2 elements on Redis 6.2, 3 on Redis 7+."""
    cursor, entries = _text(reply[0]), list(reply[1])
    deleted = [_text(i) for i in reply[2]] if len(reply) > 2 else []
    return cursor, entries, deleted


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
