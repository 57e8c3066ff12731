"""One run's lifecycle around the training loop: the entry points `diffurl train` and `--resume`, the run
directory and run.json, the embedded Redis, Ray, and the initial model.

    train(cfg)  ->  RunDir.create, config.yaml  ->  _run: Redis -> initial model -> Ray -> Driver -> loop
    resume(dir) ->  latest checkpoint, trimmed logs ->  _run with the checkpoint's driver state
Whatever happens in the loop, actors, Ray (when started here) and Redis (when embedded) are stopped, and
run.json ends with the status: finished, failed (with the error) or stopped. A Ray started here outlives a
finished run until its last step's metrics have reached the Prometheus endpoint.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import ray
import redis.exceptions as redis_errors

from actors.prompts import SYSTEM_PROMPT
from actors.stream import StreamConnectionError
from orchestrator import checkpoint
from orchestrator.config import check_paths, load_config, save_config
from orchestrator.data import load_prompts
from orchestrator.errors import RunFailed, RunInterrupted, UserError, one_line
from orchestrator.metrics import metric_name
from orchestrator.placement import actor_env, format_plan
from orchestrator.redis_server import (EVERY_INTERFACE, LOOPBACK, EmbeddedRedis, RedisSupervisor, connect, free_port,
                                      redact)
from orchestrator.rundir import RunDir


def train(cfg, *, dry_run: bool = False, out=print) -> Path | None:
    """`diffurl train CONFIG`: a new run directory, Redis, Ray and the actors, then the loop."""
    if dry_run:  # with ray.address: planned against that cluster's resources
        from orchestrator.placement import cluster_resources

        cluster = None
        if cfg.ray.address:
            probe_ray_address(cfg.ray.address)
            cluster = cluster_resources(cfg.ray.address)
        out(format_plan(cfg, cluster))
        return None
    if cfg.ray.address:
        probe_ray_address(cfg.ray.address)
    load_prompts(cfg.data.train, cfg.data.format, log=lambda _: None)  # a file without usable rows: refused here
    run = RunDir.create(cfg.run.root_dir, cfg.run.name)
    save_config(cfg, run.config)
    out(f"run directory: {run.path} (resolved config: {run.config})")
    try:
        return _run(cfg, run, resume=None, out=out)
    except UserError:
        if (not run.metrics.is_file() or not run.metrics.stat().st_size) and run.latest_checkpoint() is None:
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def resume(run_dir: str | Path, overrides: list[str] = (), *, out=print) -> Path:
    """`diffurl train --resume RUN_DIR`: continue from the run's latest checkpoint."""
    run = RunDir.existing(run_dir)
    ckpt, saved = checkpoint.latest(run)
    cfg = load_config(run.config, list(overrides))
    check_paths(cfg)
    if cfg.ray.address:
        probe_ray_address(cfg.ray.address)
    save_config(cfg, run.config)
    out(f"resuming {run.path} from {ckpt.tag} (step {saved['step']} of {cfg.run.steps}; resolved config: "
        f"{run.config})")
    checkpoint.trim_logs(run, saved)
    if saved["step"] >= cfg.run.steps:
        out(f"nothing to do: the run already has {saved['step']} steps (raise run.steps to go on)")
        return run.path
    return _run(cfg, run, resume=saved, out=out)


def _run(cfg, run: RunDir, *, resume: dict | None, out=print) -> Path:
    from orchestrator.driver import Driver

    redis, supervisor, ray_started, driver, rows, watchdog = None, None, False, None, [], None
    redis_url = None
    previous_redis_url = run.read_info().get("redis_url")
    run.write_info(status="starting", driver_pid=os.getpid(), driver_host=socket.gethostname())
    try:
        if cfg.redis.url:
            connect(cfg.redis.url)
            redis_url = cfg.redis.url
        else:
            redis = _embedded_redis(run, previous_redis_url, cluster=bool(cfg.ray.address))
            redis.start()
            redis_url = redis.url
            supervisor = RedisSupervisor(redis, out=out, on_restart=lambda pid: run.write_info(redis_pid=pid)).start()
        run.write_info(redis_url=redis_url, redis_pid=redis.pid if redis else None)
        if resume is not None:
            model_dir = run.checkpoint(resume["tag"]).policy
        else:
            model_dir = prepare_model(cfg, run, load_prompts(cfg.data.train, cfg.data.format, log=lambda _: None)[0])
        ray_started, metrics_port = init_ray(cfg, run.run_id, out=out)
        if redis is not None and redis.bind == EVERY_INTERFACE:  # on a cluster: the URL other nodes can reach
            redis.host = ray.util.get_node_ip_address()  # this node's IP as Ray knows it (after ray.init)
            redis_url = redis.url
            run.write_info(redis_url=redis_url)
        if metrics_port:
            out(f"ray metrics: http://127.0.0.1:{metrics_port}/metrics")
        run.write_info(ray_address=cfg.ray.address, metrics_port=metrics_port)
        driver = Driver(cfg, run, model_dir, redis_url, resume=resume)
        driver.start_actors()
        run.write_info(status="running")
        rows = driver.run()
        driver.run_state.set_status("finished")
        run.write_info(status="finished")
        if rows:
            out(f"done: step {driver.state.step}, reward {rows[-1]['reward_mean']:.3f}, "
                f"pass rate {rows[-1]['pass_rate']:.3f}; run directory {run.path}")
        if driver.skipped_rows:
            out(f"skipped {len(driver.skipped_rows)} bad dataset rows: " + "; ".join(driver.skipped_rows[:5]))
        return run.path
    except BaseException as e:
        lost = _lost_redis(e)
        if lost:  # clients gave up after about 2 minutes of retries (a server that stays down)
            e = RunFailed(f"redis at {redact(redis_url or '?')} stopped answering ({one_line(e)}); once it is "
                          f"back, resume with: diffurl train --resume {run.path}")
        status = "stopped" if isinstance(e, KeyboardInterrupt) else "failed"
        ours = isinstance(e, (UserError, RunFailed)) and str(e)  # already one line for people
        run.write_info(status=status, error=str(e).splitlines()[0] if ours else one_line(e))
        interrupted = isinstance(e, KeyboardInterrupt) and not isinstance(e, RunInterrupted)
        where = _interrupted_at(run) if interrupted else ""
        if interrupted:  # Ctrl-C never leaves the operator waiting on a stop that does not end
            watchdog = _exit_if_stop_hangs(where, redis)
        if driver is not None and not lost:  # (a lost Redis would be retried for minutes: run.json has it)
            driver.run_state.set_status(status)
        if interrupted:
            raise RunInterrupted(where) from None
        if isinstance(e, RunFailed):
            raise e from None
        raise
    finally:
        if supervisor is not None:
            supervisor.stop()
        if driver is not None:
            driver.stop_actors()
        if ray_started:
            try:  # the last step's metrics reach Prometheus only if Ray outlives their next export
                if rows and run.read_info().get("status") == "finished":
                    wait_for_metrics_export(metrics_port, run.run_id, len(rows), out=out)
            finally:
                ray.shutdown()
        if redis is not None:
            redis.stop()
        if watchdog is not None:  # the stop ended in time (an in-process caller goes on living)
            watchdog.cancel()


STOP_GRACE_S = 90.0  # after Ctrl-C: how long stopping the actors, sandboxes and Redis may take


def _exit_if_stop_hangs(where: str, redis) -> threading.Timer:
    """A daemon timer: if the stop that follows Ctrl-C (run.json is already `stopped`) has not ended the process
    within STOP_GRACE_S, say so in one line with the resume command, stop the embedded Redis (its append-only file
    flushed) and exit 130 without waiting for the rest; Ray reaps the actors of a driver that is gone."""
    def give_up() -> None:
        print(f"diffurl: interrupted: {where} (stopping its workers took over {STOP_GRACE_S:.0f} s; exited "
              "without waiting for them)", file=sys.stderr, flush=True)
        try:
            if redis is not None:
                redis.stop()
        finally:
            os._exit(130)

    timer = threading.Timer(STOP_GRACE_S, give_up)
    timer.daemon = True
    timer.start()
    return timer


def _lost_redis(e: BaseException) -> bool:
    """Whether `e` (or the error a Ray task raised) is a Redis client that gave up on its server."""
    cause = getattr(e, "cause", None) or e
    return isinstance(cause, (redis_errors.ConnectionError, redis_errors.TimeoutError, StreamConnectionError))


def _interrupted_at(run: RunDir) -> str:
    """Where a run stopped by Ctrl-C can go on from: its latest checkpoint, if it has one."""
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        return f"run {run.path} stopped before its first checkpoint; start it again with diffurl train"
    return f"run {run.path} stopped; resume from {ckpt.tag} with: diffurl train --resume {run.path}"


def _embedded_redis(run: RunDir, previous_url: str | None, *, cluster: bool) -> EmbeddedRedis:
    """The run's own redis-server; on resume the same password (and port, when free) as before.

    `cluster`: rollout and sandbox workers on other nodes must reach it, so it listens on every interface
    (password-protected, like always); otherwise on 127.0.0.1 only.
    """
    bind = EVERY_INTERFACE if cluster else LOOPBACK
    if not previous_url:
        return EmbeddedRedis(run.redis, bind=bind)
    parts = urlsplit(previous_url)
    port = parts.port
    try:
        with socket.socket() as s:
            s.bind((bind, port))
    except OSError:
        port = None
    return EmbeddedRedis(run.redis, port=port, password=parts.password, bind=bind)


def init_ray(cfg, run_id: str, out=print) -> tuple[bool, int | None]:
    """Connect to `ray.address` (from the config or RAY_ADDRESS) or start a local cluster.

    A local start that times out (Ray's "node timed out during startup", on a loaded machine) is tried once
    more after cleaning up; a second timeout is a UserError saying what to try. Returns (started_here,
    metrics_export_port).
    """
    namespace = f"{cfg.ray.namespace}-{run_id}"
    if ray.is_initialized():
        return False, None
    if cfg.ray.address:
        try:
            ray.init(address=cfg.ray.address, namespace=namespace, log_to_driver=True,
                     runtime_env={"env_vars": actor_env()})
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UserError(f"ray.address={cfg.ray.address}: cannot connect to a Ray cluster there ({e})")
        return False, None
    port = cfg.ray.metrics_export_port or free_port()
    kwargs = dict(namespace=namespace, include_dashboard=cfg.ray.include_dashboard,
                  _metrics_export_port=port, log_to_driver=True, runtime_env={"env_vars": actor_env()})
    if cfg.ray.include_dashboard:
        kwargs["dashboard_port"] = cfg.ray.dashboard_port
    if cfg.ray.num_cpus is not None:
        kwargs["num_cpus"] = cfg.ray.num_cpus
    for attempt in (1, 2):
        try:
            ray.init(**kwargs)
            return True, kwargs["_metrics_export_port"]
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for a node that does not start
            if "timed out" not in str(e).lower():
                raise
            ray.shutdown()  # whatever the failed start left running
            if attempt == 2:
                cpus = f"ray.num_cpus={cfg.ray.num_cpus}" if cfg.ray.num_cpus is not None else "all cores"
                raise UserError(f"ray.init: the local Ray node timed out during startup twice ({cpus}); free "
                                "CPU and memory on this machine, or set a lower ray.num_cpus=N, or start a "
                                "cluster with `ray start --head --port=6380` and set ray.address=HOST:6380"
                                ) from None
            out(f"ray: the local node timed out during startup ({one_line(e)}); trying once more")
            if not cfg.ray.metrics_export_port:
                kwargs["_metrics_export_port"] = free_port()  # the first try's port may not be free yet
    raise AssertionError("unreachable")


def wait_for_metrics_export(port: int, run_name: str, steps: int, out=print, poll_s: float = 0.5) -> bool:
    """Block until the Prometheus endpoint on `port` counts the `steps` steps this process logged for the run
    (`ray_diffurl_steps_total`, counted after each step's gauges are set), so that Ray is not shut down before
    the last step's metrics are exported: Ray's metrics agent takes them from this process every
    `metrics_report_interval_ms` (10 s by default). Waits at most two report intervals; True when seen."""
    wait_s = 2 * max(ray._config.metrics_report_interval_ms(), 1000) / 1000  # Ray's own floor is 1 s
    url = f"http://127.0.0.1:{port}/metrics"
    series = re.compile(rf'^ray_{metric_name("steps")}_total{{[^}}]*run="{re.escape(run_name)}"[^}}]*}} (\S+)$',
                        re.M)

    def exported() -> bool:
        try:
            match = series.search(urllib.request.urlopen(url, timeout=2).read().decode())
        except OSError:
            return False
        return match is not None and float(match.group(1)) >= steps

    if exported():
        return True
    out(f"ray metrics: waiting up to {wait_s:.0f} s for the last step to reach {url} before Ray stops")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        if exported():
            return True
    out(f"ray metrics: the last step did not reach {url} in {wait_s:.0f} s; Prometheus may lack it")
    return False


def probe_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes, when a HOST:PORT cluster address does not answer (ray.init would hang)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: leave them to ray.init
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(f"ray.address={address}: no Ray cluster answers there ({e.strerror or e}); "
                        f"start one with `ray start --head` or unset RAY_ADDRESS for a local cluster") from None


def tokenizer_corpus(problems: list[dict]) -> list[str]:
    """Texts the tiny model's BPE is trained on: every question, test and reference of the dataset."""
    texts = []
    for p in problems:
        texts.append(p.get("question", ""))
        texts.extend(p.get("tests", []))
        if p.get("reference"):
            texts.append(f"```python\n{p['reference']}\n```\n")
    texts.append(SYSTEM_PROMPT)
    return [t for t in texts if t]


def prepare_model(cfg, run: RunDir, problems: list[dict]) -> Path:
    """The initial policy as an HF directory every actor loads: `model.path`, or a freshly built tiny model of
    the run's policy family (orchestrator.config.policy_family: model.tiny.family, or a causal Qwen2 for
    learner.objective=ar_grpo, all with the same tokenizer recipe)."""
    if cfg.model.path:
        path = Path(cfg.model.path)
        if not (path / "config.json").is_file():
            raise UserError(f"model.path={cfg.model.path}: not a model directory (no config.json there)")
        return path
    from actors.policy import policy_for
    from orchestrator.config import policy_family

    policy = policy_for(policy_family(cfg))
    model, tokenizer = policy.build_tiny(cfg.model.tiny.spec(tokenizer_corpus(problems), cfg.run.seed))
    policy.save(model, tokenizer, run.init_model)
    return run.init_model


