"""The trajectory stream (Redis Streams): what rollout workers publish to and the learner reads from.

Rollout workers `publish` one `Trajectory` (actors/trajectory.py) per scored prompt group; the learner
`read`s them through a consumer group and the driver `ack`s them only after the step that consumed them
is checkpointed. A consumer that restarts under the same name first gets back its delivered-but-
unacknowledged entries, so a crash replays groups and never loses them. The driver hands the actors a picklable
factory of this stream; the driver-side run state (desired workers, status, heartbeats) is
orchestrator/stream.py's `RunState`.

Records are JSON: a lossless round trip for nested dicts (string keys) and lists of ints, floats (exact),
strings, bools and None. NaN and infinities are rejected at `publish` (a NaN reward is a bug upstream).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from actors.trajectory import Trajectory

RECONNECT_RETRIES = 70  # with the 2 s backoff cap: a command waits about 2 minutes for Redis to come back


class StreamConnectionError(ValueError):
    """The Redis server at a URL cannot be used (bad URL, refused, unreachable): the message says which."""


def connect(url: str, retries: int = 20, delay_s: float = 0.25) -> redis.Redis:
    """A client (bytes responses) for `url`, once PING answers; StreamConnectionError if it never does
    (orchestrator.redis_server.connect words it as a UserError)."""
    try:
        client = redis.Redis.from_url(url, decode_responses=False, socket_connect_timeout=2.0,
                                      health_check_interval=30)
    except ValueError as exc:
        raise StreamConnectionError(f"redis.url={redact(url)}: {exc}; expected redis://[:password@]host:port/db") from None
    for attempt in range(retries + 1):
        try:
            client.ping()
            # from now on every command waits out a server restart (about 2 minutes) instead of failing
            client.set_retry(Retry(ExponentialBackoff(cap=2.0, base=0.1), RECONNECT_RETRIES))
            return client
        except redis.exceptions.AuthenticationError as exc:
            raise StreamConnectionError(f"redis.url={redact(url)}: authentication failed ({exc})") from None
        except redis.exceptions.ResponseError as exc:
            raise StreamConnectionError(f"redis.url={redact(url)}: server refused the connection ({exc})") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            if attempt == retries:
                raise StreamConnectionError(f"redis.url={redact(url)}: cannot connect after {retries + 1} tries ({exc})") from None
            time.sleep(delay_s)
    raise AssertionError("unreachable")


def redact(url: str) -> str:
    """`url` with its password replaced by ***, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


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
