"""The one owner of a run directory's layout: every path inside RUN_DIR is named here and nowhere else.

    RUN_DIR/
      config.yaml            resolved config (`diffurl train --resume` reloads it)
      run.json               how to reach the run (Redis, Ray, driver pid) and its status
      metrics.jsonl          one row per step
      trained_groups.jsonl   per step: the groups trained on (entry id, group id, prompt id, version)
      unjudgeable.json       {task_id: why} of the training problems left out at the start (a resume reuses it)
      tensorboard/           TensorBoard event files
      redis/                 the embedded redis-server's data (AOF)
      init_model/            the initial policy when the config builds a tiny model
      curves.png             `diffurl plot`'s default output
      reward_curve.png, demo_table.md, demo_results.json   what `diffurl demo` writes after its run
      checkpoints/
        latest               tag of the newest complete checkpoint (moved only once it is all on disk)
        step000004/          DeepSpeed shards, driver_state.json, reference_model.pt, policy/ (HF dir)
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError

_INFO_LOCK = threading.RLock()  # run.json's read-modify-write; re-entrant: a Ctrl-C landing inside it must not
# deadlock the `failed`/`stopped` write that follows on the same thread


@dataclass(frozen=True)
class CheckpointDir:
    path: Path

    @property
    def tag(self) -> str:
        return self.path.name

    @property
    def policy(self) -> Path:
        """The policy as a Hugging Face model directory (what `diffurl eval` and a resume load)."""
        return self.path / "policy"

    @property
    def reference_model(self) -> Path:
        return self.path / "reference_model.pt"

    @property
    def driver_state(self) -> Path:
        return self.path / "driver_state.json"

    def read_driver_state(self) -> dict:
        return json.loads(self.driver_state.read_text())


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def create(cls, root_dir: str | Path, name: str) -> RunDir:
        """A new, empty `root_dir/<name>-<YYYYmmdd-HHMMSS>[-n]`."""
        root, stamp = Path(root_dir), time.strftime("%Y%m%d-%H%M%S")
        path, n = root / f"{name}-{stamp}", 1
        while path.exists():
            n += 1
            path = root / f"{name}-{stamp}-{n}"
        try:
            path.mkdir(parents=True)
        except OSError as e:
            raise UserError(f"run.root_dir={root_dir}: cannot create the run directory ({e.strerror})") from None
        return cls(path)

    @classmethod
    def existing(cls, path: str | Path, what: str = "--resume") -> RunDir:
        """An existing run directory (it has a config.yaml), or a one-line UserError naming `what`."""
        run = cls(Path(path))
        if not run.config.is_file():
            raise UserError(f"{what} {path}: not a run directory (no config.yaml there)")
        return run

    @property
    def run_id(self) -> str:
        return self.path.name

    # files and folders of the run
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_info(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def trained_groups(self) -> Path:
        return self.path / "trained_groups.jsonl"

    @property
    def unjudgeable(self) -> Path:
        return self.path / "unjudgeable.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def redis(self) -> Path:
        return self.path / "redis"

    @property
    def init_model(self) -> Path:
        return self.path / "init_model"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def reward_curve(self) -> Path:
        return self.path / "reward_curve.png"

    @property
    def demo_table(self) -> Path:
        return self.path / "demo_table.md"

    @property
    def demo_results(self) -> Path:
        return self.path / "demo_results.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    # run.json
    def read_info(self) -> dict:
        return json.loads(self.run_info.read_text()) if self.run_info.is_file() else {}

    def write_info(self, **fields) -> None:
        """Update run.json atomically: how to reach the run (Redis, Ray, driver pid) and its status. Thread-safe
        in this process (the Redis supervisor records a restarted server's pid from its own thread)."""
        with _INFO_LOCK:
            info = self.read_info() or {"run_id": self.run_id, "run_dir": str(self.path), "started": time.time()}
            info.update(fields, updated=time.time())
            tmp = self.run_info.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2))
            tmp.replace(self.run_info)

    # checkpoints
    def checkpoint(self, tag: str) -> CheckpointDir:
        return CheckpointDir(self.checkpoints / tag)

    def latest_checkpoint(self) -> CheckpointDir | None:
        """The newest complete checkpoint, or None before the first."""
        latest = self.checkpoints / "latest"
        return self.checkpoint(latest.read_text().strip()) if latest.is_file() else None

    def mark_latest(self, tag: str) -> None:
        """Point `latest` at `tag` atomically (call once everything of the checkpoint is on disk)."""
        tmp = self.checkpoints / "latest.tmp"
        tmp.write_text(tag)
        tmp.replace(self.checkpoints / "latest")

    def prune_checkpoints(self, keep: int) -> None:
        """Delete all but the newest `keep` checkpoints."""
        tags = sorted(p.name for p in self.checkpoints.iterdir() if p.is_dir() and p.name.startswith("step"))
        for tag in tags[:-keep]:
            shutil.rmtree(self.checkpoints / tag, ignore_errors=True)


def checkpoint_tag(step: int) -> str:
    return f"step{step:06d}"
