"""`diffurl submit CONFIG [key=value ...] --address http://HEAD:8265`: run training as a Ray job.

    diffurl submit configs/diffucoder_7b.yaml run.root_dir=/shared/runs --address http://HEAD:8265 [--wait]
    diffurl submit --resume /shared/runs/diffucoder-20250101-120000 --address http://HEAD:8265

The config is validated here first (a bad one exits 2 before anything is submitted). The job's entrypoint is
`python -m orchestrator.cli train CONFIG overrides...`, run on the cluster in a copy of this project (the Ray
runtime env's `working_dir`, without .venv, runs/, .cache, .git), so relative config and data paths work there.
It is preceded by a check that the node's `python` imports ray: a Ray started from an un-activated venv runs
jobs with the system python, which would fail with a ModuleNotFoundError trace; the check says what to do in
one line and exits 2. The dashboard's Jobs table names the job by the run (`metadata["job_name"]`).
The job's driver connects to the cluster through the RAY_ADDRESS its job supervisor sets and inherits the
cluster's RAY_AUTH_MODE and token from the node it runs on.

Token authentication: when a token exists (RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or
~/.ray/auth_token, Ray's own order), it is sent as `Authorization: Bearer <token>`, whatever RAY_AUTH_MODE
says on this machine; a cluster without token auth ignores it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import REPO_ROOT, check_paths, load_config
from orchestrator.errors import UserError
from orchestrator.rundir import RunDir

EXCLUDED_DIRS = (".venv", "runs", ".cache", ".git")  # never uploaded with the project
EXCLUDES = [*EXCLUDED_DIRS, "**/__pycache__", "*.egg-info", ".pytest_cache"]
DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")  # ray.job_submission.JobStatus values


def auth_token() -> tuple[str, str] | tuple[None, None]:
    """(token, where it came from) in Ray's order of precedence, or (None, None) when this machine has none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else DEFAULT_TOKEN_PATH.expanduser()
    if named and not path.is_file():
        raise UserError(f"RAY_AUTH_TOKEN_PATH={named}: no such file; point it at the cluster's token file")
    token = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    return (token, str(path)) if token else (None, None)


def dashboard_url(address: str | None) -> str:
    """`http://HOST:PORT` of the dashboard (a bare HOST:PORT gets http://); UserError when there is none."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        raise UserError("--address: missing; give the Ray dashboard URL, e.g. --address http://HEAD:8265 "
                        "(or set RAY_API_SERVER_ADDRESS)")
    if "://" not in address:
        address = "http://" + address
    if not address.startswith(("http://", "https://")):
        raise UserError(f"--address={address}: expected the dashboard's http(s)://HOST:PORT, e.g. http://HEAD:8265")
    return address.rstrip("/")


def job_client(address: str):
    """A JobSubmissionClient for the dashboard at `address`, sending the auth token when one exists."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    token, source = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with _without_env("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):  # they would silently override `address`
        try:
            return JobSubmissionClient(address, headers=headers)
        except AuthenticationError:
            sent = f"the token from {source} was refused" if token else "none was found"
            raise UserError(f"--address={address}: the cluster requires a Ray auth token and {sent}; set "
                            f"RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or put the cluster's token in "
                            f"{DEFAULT_TOKEN_PATH}") from None
        except (ConnectionError, RuntimeError) as e:
            raise UserError(f"--address={address}: cannot reach the Ray Jobs API there ({_one_line(e)})") from None


def check_shipped_paths(raw) -> list[str]:
    """The configured data and model paths as given (`raw`: a config loaded without resolving them) and as the
    job will resolve them, in its copy of the project: a relative path must name a file from the project root
    that is uploaded (not under .venv, runs, .cache or .git; no `..` out of it), else a one-line UserError before
    anything is submitted; an absolute path is a note (it must exist at that path on the cluster)."""
    from orchestrator.config import _absolute, configured_paths

    notes = []
    for key, value in configured_paths(raw):
        if Path(value).is_absolute():
            notes.append(f"{key}={value} must exist at that path on the cluster")
            continue
        here = Path(_absolute(value)).resolve()  # what it names on this machine (check_paths found it)
        hint = (f"give it as {here.relative_to(REPO_ROOT)} (from the project root)" if here.is_relative_to(REPO_ROOT)
                else "give an absolute path that exists on the cluster (a shared disk)")
        inside = Path(os.path.normpath(value))  # what the job finds, from the root of its copy
        if inside.parts[:1] == ("..",):
            raise UserError(f"{key}={value}: leads out of the project, which is all submit uploads; {hint}")
        excluded = next((part for part in inside.parts if part in EXCLUDED_DIRS), None)
        if excluded:
            raise UserError(f"{key}={value}: under {excluded}/, which submit does not upload (it leaves out "
                            f"{', '.join(EXCLUDED_DIRS)}); copy it to a shared disk and give that absolute path")
        if (REPO_ROOT / inside).resolve() != here:
            raise UserError(f"{key}={value}: the job resolves it from the root of its copy of the project, where it "
                            f"names {'another file' if (REPO_ROOT / inside).exists() else 'nothing'}; {hint}")
    return notes


def job_config_path(config: str) -> str:
    """CONFIG as the job will see it: relative to the project root when inside it, else absolute."""
    path = Path(config).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


NO_RAY = ("diffurl: the job's python ({python}) cannot import ray: start Ray from an activated venv "
          "(source .venv/bin/activate && ray start ...) or put the venv's bin on PATH")


def entrypoint(config: str | None, overrides: list[str], resume: str | None = None) -> str:
    """The job's shell command: the ray check (NO_RAY and exit 2 when the `python` on the node's PATH cannot
    import ray), then `python -m orchestrator.cli train CONFIG overrides...` (or `train --resume RUN ...`)."""
    train = ["--resume", resume] if resume else [config]
    before, after = NO_RAY.split("{python}")
    which = '"$(command -v python || echo none on PATH)"'
    guard = (f"python -c 'import ray' 2>/dev/null || "
             f"{{ echo {shlex.quote(before)}{which}{shlex.quote(after)} >&2; exit 2; }}")
    label = shlex.join(["diffurl", "train", *train, *overrides])  # `:` does nothing: the dashboard shows it first
    return f": {label}; {guard}; exec " + shlex.join(["python", "-m", "orchestrator.cli", "train", *train, *overrides])


def runtime_env() -> dict:
    """The project as the job's working directory. No env vars: the job inherits the cluster's RAY_AUTH_MODE
    and token from its nodes (this machine's RAY_AUTH_MODE may differ, and a token must not travel in plain
    sight in the job's runtime env)."""
    return {"working_dir": str(REPO_ROOT), "excludes": EXCLUDES}


@dataclass
class Submitted:
    job_id: str
    url: str  # the dashboard
    client: object  # the JobSubmissionClient
    notes: list[str]  # things the user should know about how the job sees the config


def submit(config: str | None, overrides: list[str], address: str | None, resume: str | None = None) -> Submitted:
    """Validate here, then submit the training job (a new run from CONFIG, or `--resume RUN`) to `address`."""
    if resume:
        run = RunDir(Path(resume).resolve())
        if not run.config.is_file():
            raise UserError(f"--resume {resume}: not a run directory here (no config.yaml); give the run directory "
                            "as this machine sees it on the shared disk")
        if run.latest_checkpoint() is None:
            raise UserError(f"--resume {resume}: the run has no checkpoint yet; submit it again from its config")
        config = str(run.config)
    elif not config:
        raise UserError("submit: give a CONFIG (e.g. configs/demo.yaml) or --resume RUN")
    cfg = load_config(config, overrides)
    check_paths(cfg)
    shipped_notes = check_shipped_paths(load_config(config, overrides, resolve_paths=False))
    url = dashboard_url(address)
    client = job_client(url)
    notes = list(shipped_notes)
    if resume:
        command = entrypoint(None, overrides, resume=str(run.path))
        notes.append(f"{run.path} must be the same path on the cluster")
    else:
        job_config = job_config_path(config)
        command = entrypoint(job_config, overrides)
        if Path(job_config).is_absolute():
            notes.append(f"{config} is outside {REPO_ROOT} (what the job gets): it must exist at {job_config} "
                         "on the cluster")
        if not Path(cfg.run.root_dir).is_absolute():
            notes.append(f"run.root_dir={cfg.run.root_dir} is relative: the run directory lands inside the job's "
                         "temporary copy of the project; give run.root_dir=/shared/path to keep it")
    name = run.path.name if resume else cfg.run.name
    what = f"resume {run.path}" if resume else f"train {job_config_path(config)}"
    try:
        with _quiet_ray_logs():
            job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env(),
                                       submission_id=_job_id(name),
                                       metadata={"diffurl_run": cfg.run.name, "job_name": f"{name}: {what}"})
    except (RuntimeError, OSError) as e:  # a refused request, a failed upload of the project
        raise UserError(f"--address={url}: the cluster did not accept the job ({_one_line(e)})") from None
    return Submitted(job_id, url, client, notes)


def wait_for_job(client, job_id: str, url: str, poll_s: float = 2.0) -> str:
    """Block until the job ends, printing each status change; returns the final status name."""
    last = None
    while True:
        try:
            status = str(client.get_job_status(job_id))  # JobStatus prints as its name
        except OSError as e:  # requests' ConnectionError: the head went away
            raise UserError(f"--address={url}: lost the Ray Jobs API while waiting for job {job_id} "
                            f"({type(e).__name__}); once it is back: ray job status {job_id} --address {url}") from None
        if status != last:
            print(f"job {job_id}: {status}", flush=True)
            last = status
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:limit]


def _job_id(name: str) -> str:
    """The job's id, named after the run (the dashboard lists jobs by it): `NAME-YYYYmmdd-HHMMSS-PID`."""
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


@contextlib.contextmanager
def _quiet_ray_logs():
    """Ray's packaging INFO and default-exclude WARNING lines on every upload (what is left out is EXCLUDES,
    on purpose) are not for the user: its loggers are raised to ERROR while the job is submitted."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "ray" or name.startswith("ray.")]  # some set their own level
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def _without_env(*names: str):
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def submit_command(config: str | None, overrides: list[str], *, resume: str | None, address: str | None,
                   wait: bool) -> int:
    """`diffurl submit`: submit, print how to follow the job, and with `wait` block until it ends."""
    if resume and config:  # `submit --resume RUN k=v`: the first override lands in CONFIG
        overrides = [config, *overrides]
    job = submit(None if resume else config, overrides, address, resume=resume)
    job_id, url, client = job.job_id, job.url, job.client
    print(f"submitted job {job_id} to {url}")
    for note in job.notes:
        print(f"note: {note}")
    print(f"follow its logs:  ray job logs --follow {job_id} --address {url}")
    print(f"its status:       ray job status {job_id} --address {url}   (dashboard: {url}/#/jobs/{job_id})")
    if not wait:
        return 0
    status = wait_for_job(client, job_id, url)
    if status == "SUCCEEDED":
        return 0
    tail = client.get_job_logs(job_id).rstrip().splitlines()[-20:]
    print("\n".join(tail), file=sys.stderr)
    print(f"diffurl: job {job_id} ended {status}; full logs: ray job logs {job_id} --address {url}", file=sys.stderr)
    return 1
