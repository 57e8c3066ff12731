"""Checkpoint and resume of a run: save after a step, find the newest, rebuild the loop state from it.

A checkpoint holds the learner ranks' DeepSpeed states (model, optimizer, scheduler, RNG), the reference
model, the policy as an HF directory, and the driver state (step, version, next group, trained group ids,
consumed prompt ids, the step's metrics row). `latest` moves only once all of it is on disk; the stream
entries a checkpoint covers are acknowledged only after that, so a crash replays them, never loses them.
On resume, groups published after the checkpoint come back from the stream, groups issued after it and
lost are issued again, and nothing trained on before it is trained on again.
"""
from __future__ import annotations

import json

from orchestrator.bookkeeping import LoopState, PromptSampler, group_id, group_index
from orchestrator.errors import UserError
from orchestrator.metrics import read_jsonl
from orchestrator.rundir import CheckpointDir, RunDir, checkpoint_tag


def save(run: RunDir, learners, stream, state: LoopState, sampler: PromptSampler, row: dict,
         groups: list[dict], keep: int) -> CheckpointDir:
    """Checkpoint the run as of `state.step` (just trained), then acknowledge what it covers."""
    ckpt = run.checkpoint(checkpoint_tag(state.step))
    driver_state = {"tag": ckpt.tag, "step": state.step, "version": state.version, "next_index": state.next_index,
                    "trained_group_ids": sorted(state.trained),
                    "consumed_prompt_ids": [sampler.problem_at(group_index(g))["task_id"] for g in sorted(state.trained)],
                    "metrics_row": row, "groups": groups}
    covered = learners.save_checkpoint(str(run.checkpoints), ckpt.tag, str(ckpt.policy), str(ckpt.reference_model),
                                       {"driver": driver_state})
    ckpt.driver_state.write_text(json.dumps(driver_state))
    run.mark_latest(ckpt.tag)
    stream.ack(covered)
    run.prune_checkpoints(keep)
    return ckpt


def latest(run: RunDir) -> tuple[CheckpointDir, dict]:
    """The newest checkpoint of a run and its driver state, or a one-line UserError."""
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise UserError(f"--resume {run.path}: the run has no checkpoint yet; start it again with diffurl train")
    return ckpt, ckpt.read_driver_state()


def restore(saved: dict, stream) -> LoopState:
    """The loop state to continue from: the checkpoint's, plus the groups the stream still holds."""
    state = LoopState(step=saved["step"], version=saved["version"], next_index=saved["next_index"],
                      trained=set(saved["trained_group_ids"]))
    for entry_id, trajectory in stream.entries():
        state.accept(trajectory.summary(entry_id))
    published = {group_index(g) for g in state.accepted}
    state.next_index = max([state.next_index, *(i + 1 for i in published)])
    state.reissue = [i for i in range(state.next_index) if group_id(i) not in state.trained and i not in published]
    return state


def record_step(run: RunDir, step: int, groups: list[dict]) -> None:
    """Append the step's trained groups to trained_groups.jsonl."""
    with run.trained_groups.open("a") as f:
        f.write(json.dumps({"step": step, "groups": groups}) + "\n")


def trim_logs(run: RunDir, saved: dict) -> None:
    """Per-step logs hold each step exactly once: drop steps after the checkpoint (they will run again)
    and restore the checkpoint's own step if the driver died between checkpoint and log."""
    for path, row in ((run.metrics, {"step": saved["step"], **saved["metrics_row"]}),
                      (run.trained_groups, {"step": saved["step"], "groups": saved["groups"]})):
        kept = [r for r in (read_jsonl(path) if path.exists() else []) if r["step"] <= saved["step"]]
        if not any(r["step"] == saved["step"] for r in kept):
            kept.append(row)
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
