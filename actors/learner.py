"""Learner: one DeepSpeed rank of coupled-GRPO training, run as a Ray actor named `learner-<rank>`.

Per step: rank 0 reads B scored groups (`Trajectory`) from the stream and shares them with the other
ranks; every rank takes its contiguous shard of the B*G sequences, computes advantages, the old and
reference scores with the shared mask seeds, and runs `mu` optimiser updates. Weights leave through
`export_weights` (rank 0, one object) and checkpoints through DeepSpeed's own save/load.

Loss normalisation (`learner.loss_norm`):
- `step_tokens` (default): every update's loss is sum over all completion tokens of the step (all
  micro-batches, all ranks) of the per-token loss, divided by the step's completion-token count
  (OpenRLHF's `aggregate_loss` token mean over the global batch). The update is then independent of
  `micro_batch_size` and of the number of ranks: each micro-batch backpropagates its token sum / N_step,
  times the DP world size that DeepSpeed's gradient averaging divides out, without DeepSpeed's 1/GAS.
- `micro_batch_tokens`: each micro-batch's token mean, averaged over micro-batches and ranks by
  DeepSpeed (DiffuCoder's released `coupled_grpo.py`); the update depends on how the batch is split.
Mask seeds are per sequence (step, iteration, row of the step), so the masks do not depend on the split.
"""
from __future__ import annotations

import dataclasses
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
import torch.distributed as dist

from actors.termination import exit_quietly_on_sigterm
from actors.dllm import derived_seed, grpo_advantages, grpo_loss, left_pad, lr_lambda, update_reference
from actors.engines import torch_device
from actors.policy import policy_for
from actors.trajectory import Trajectory
from actors.weight_sync import BroadcastMember, Layout, free_port_here, layout_of

STAT_KEYS = ("loss", "kl", "clip_fraction", "ratio_mean")


@dataclass
class MicroBatch:
    """b sequences of this rank's shard of a step (P: the longest prompt, left-padded; K: the canvas)."""
    rows: list[int]                 # [b] the sequences' rows in the step: their mask seeds
    input_ids: torch.Tensor         # [b, P+K] prompt ++ completion
    attention_mask: torch.Tensor    # [b, P+K] 0 on left padding
    completion_mask: torch.Tensor   # bool [b, K] tokens trained on: up to and including the first end token
    advantages: torch.Tensor        # [b]
    rollout_logprobs: torch.Tensor | None = None  # [b, K] the engine's log-probs (vLLM, AR-GRPO), else None

    def to(self, device) -> MicroBatch:
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if torch.is_tensor(getattr(self, f.name))})


def _skip_shm_build() -> None:
    """DeepSpeed JIT-compiles a shared-memory all-reduce op on CPU (25-45 s) that training never uses."""
    import deepspeed.comm  # noqa: F401  (loads the module deepspeed.comm.torch)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def deepspeed_config(cfg, world_size: int, bf16: bool = False) -> dict:
    lc = cfg.learner
    n_sequences = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    return {
        "train_batch_size": n_sequences,
        "train_micro_batch_size_per_gpu": lc.micro_batch_size,
        "gradient_accumulation_steps": n_sequences // (lc.micro_batch_size * world_size),
        "gradient_clipping": lc.grad_clip,
        "zero_optimization": {"stage": lc.zero_stage},
        "bf16": {"enabled": bf16 or cfg.model.dtype == "bfloat16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class LearnerImpl:
    def __init__(self, cfg, rank: int, world_size: int, device: str = "cpu"):
        """A rank that holds nothing yet: `setup` builds the model and joins the DeepSpeed group once rank 0's
        address is known (`master_address`). `device`: "cuda" (the GPU Ray assigned to this actor, bf16, nccl)
        or "cpu" (the configured dtype, gloo)."""
        exit_quietly_on_sigterm()
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        try:
            self.device = torch_device(device)
        except RuntimeError as e:
            raise RuntimeError(f"learner-{rank}: {e}") from None
        os.environ["DS_ACCELERATOR"] = "cuda" if device == "cuda" else "cpu"  # before deepspeed is imported
        self.weight_group = None

    def master_address(self) -> tuple[str, int]:
        """This node's IP as the other nodes see it and a port free on it (called on rank 0)."""
        return ray.util.get_node_ip_address(), free_port_here()

    def setup(self, master_addr: str, master_port: int, model_dir: str, open_stream,
              resume_from: tuple[str, str, str] | None = None) -> dict:
        """Join the DeepSpeed group at rank 0's `master_addr:master_port`, build the model and the engine.
        `resume_from`: (checkpoint root, tag, reference model file) to continue from; `model_dir` is then that
        checkpoint's policy."""
        cfg, rank, world_size = self.cfg, self.rank, self.world_size
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0", LOCAL_SIZE="1")
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            torch.cuda.set_device(self.device)
        else:
            _skip_shm_build()
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
        lc = cfg.learner
        self.bf16 = on_gpu or cfg.model.dtype == "bfloat16"

        self.policy = policy_for(model_dir)  # the family: Dream, LLaDA or a causal Qwen2 (AR-GRPO)
        model, self.tokenizer = self.policy.load(model_dir)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.to(self.device).train()
        self.mask_id = self.tokenizer.mask_token_id
        self.ref_model = None
        if lc.kl_beta > 0:
            self.ref_model, _ = self.policy.load(model_dir)
            self.ref_model.to(self.device).eval().requires_grad_(False)
            if self.bf16:
                self.ref_model.to(torch.bfloat16)

        optimizer = torch.optim.AdamW(model.parameters(), lr=lc.lr, betas=tuple(lc.adam_betas),
                                      weight_decay=lc.weight_decay)
        schedule = lr_lambda(warmup=lc.warmup_steps, total=cfg.run.steps * lc.mu, schedule=lc.lr_schedule,
                             floor=lc.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(cfg, world_size, bf16=self.bf16))
        self.stream = open_stream() if rank == 0 else None
        self.consumed_entries: list[str] = []  # consumed since the last checkpoint, acknowledged after it
        self.trained_group_ids: set[str] = set()  # every group trained on, as of the latest step
        self._first_read = True
        if resume_from is not None:
            self._load_checkpoint(*resume_from)
        return self.info()

    def info(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(), "device": str(self.device)}

    # ----------------------------------------------------------------- data
    def _read_groups(self, count: int, timeout_s: float) -> list[tuple[str, Trajectory]]:
        """`count` groups never trained on. A second copy of a group (a re-issued rollout whose first try
        was published after all) is acknowledged and dropped, so no group is trained on twice."""
        got: list[tuple[str, Trajectory]] = []
        seen = set(self.trained_group_ids)
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"learner waited {timeout_s:.0f}s for {count} groups, got {len(got)}")
            # replay this consumer's unacknowledged entries only on the first read after a (re)start
            entries = self.stream.read(count - len(got), consumer="learner", block_ms=1000,
                                       replay=self._first_read)
            self._first_read = False
            self.stream.ack([eid for eid, traj in entries if traj.group_id in seen])
            for eid, traj in entries:
                if traj.group_id not in seen:
                    seen.add(traj.group_id)
                    got.append((eid, traj))
        return got

    def _shared_groups(self, count: int, timeout_s: float) -> list[tuple[str, Trajectory]]:
        box = [self._read_groups(count, timeout_s) if self.rank == 0 else None]
        if self.world_size > 1:
            dist.broadcast_object_list(box, src=0)
        return sorted(box[0], key=lambda e: e[1].group_id)

    def _micro_batches(self, groups: list[Trajectory]) -> tuple[list[MicroBatch], torch.Tensor]:
        """Flatten B groups into B*G sequences, keep this rank's contiguous shard, cut micro-batches."""
        lc = self.cfg.learner
        rewards = torch.tensor([g.reward_values for g in groups], dtype=torch.float32)  # [B, G]
        adv = grpo_advantages(rewards, baseline=lc.advantage, scale_std=lc.scale_std).flatten()  # [B*G]
        rows = [(g.prompt_ids, ids, mask) for g in groups for ids, mask in zip(g.completion_ids, g.completion_mask)]
        engine_logprobs = None  # AR-GRPO: the per-token log-probs vLLM reported, [B*G][K]
        if all(g.rollout_logprobs is not None for g in groups):
            engine_logprobs = [lp for g in groups for lp in g.rollout_logprobs]
        per_rank = len(rows) // self.world_size
        first = self.rank * per_rank
        batches = []
        for s in range(first, first + per_rank, lc.micro_batch_size):
            index = list(range(s, min(s + lc.micro_batch_size, first + per_rank)))  # rows of the step
            prompt_ids, prompt_mask = left_pad([rows[i][0] for i in index], self.tokenizer.pad_token_id)
            completion = torch.tensor([rows[i][1] for i in index], dtype=torch.long)
            batches.append(MicroBatch(
                rows=index, input_ids=torch.cat([prompt_ids, completion], dim=1),
                attention_mask=torch.cat([prompt_mask, torch.ones_like(completion)], dim=1),
                completion_mask=torch.tensor([rows[i][2] for i in index], dtype=torch.bool), advantages=adv[index],
                rollout_logprobs=None if engine_logprobs is None else torch.tensor(
                    [engine_logprobs[i] for i in index], dtype=torch.float32)).to(self.device))
        return batches, rewards

    def _scores(self, model, mb: MicroBatch, step: int, iteration: int) -> torch.Tensor:
        """Token scores [b, K] under the policy (actors/policy.py): a dLLM's estimator with one mask seed per
        sequence, (run seed, step, iteration, row of the step); a causal policy's exact log-probs."""
        if self.cfg.learner.mask_seed_policy == "fixed":
            iteration = 0
        seeds = [derived_seed(self.cfg.run.seed, "mask", step, iteration, row) for row in mb.rows]
        return self.policy.token_scores(model, mb.input_ids, mb.attention_mask, mb.completion_mask,
                                        estimator=self.cfg.learner.estimator, seed=seeds, mask_id=self.mask_id).scores

    # ----------------------------------------------------------------- one step
    def train_step(self, step: int, read_timeout_s: float = 900.0) -> dict:
        """Read B groups, score them under the old and reference policies, run `mu` updates; returns the
        step's statistics (token means over the whole step, the same on every rank)."""
        t0 = time.perf_counter()
        entries = self._shared_groups(self.cfg.rollout.prompts_per_step, read_timeout_s)
        self.consumed_entries += [eid for eid, _ in entries]
        self.trained_group_ids.update(traj.group_id for _, traj in entries)
        batches, rewards = self._micro_batches([traj for _, traj in entries])
        step_tokens = sum(sum(row) for _, traj in entries for row in traj.completion_mask)  # all ranks
        t_read = time.perf_counter() - t0

        t0 = time.perf_counter()
        old, ref = self._score_phase(batches, step)
        t_score = time.perf_counter() - t0

        t0 = time.perf_counter()
        sums, grad_norm = self._updates(batches, old, ref, step, max(1, step_tokens))
        t_train = time.perf_counter() - t0
        return {**sums, "grad_norm": grad_norm, "lr": float(self.scheduler.get_last_lr()[0]),
                "time_read": t_read, "time_score": t_score, "time_train": t_train,
                "zero_var_frac": float((rewards.std(dim=1) == 0).float().mean()),
                "groups": [{"entry_id": eid, "group_id": traj.group_id, "prompt_id": traj.prompt_id,
                            "version_start": traj.version_start} for eid, traj in entries]}

    @property
    def _per_iteration(self) -> bool:
        """Masks drawn anew each iteration, so the old scores differ per iteration (a causal policy's log-probs
        are exact: the old policy's scores are the same in every iteration)."""
        return self.cfg.learner.mask_seed_policy == "per_iteration" and not self.policy.exact_scores

    @torch.no_grad()
    def _score_phase(self, batches: list[MicroBatch], step: int) -> tuple[dict, dict]:
        """The step's fixed scores, before any update (OpenRLHF's experience-maker order), keyed (iteration,
        micro-batch): the old policy's (the weights the step starts from) and the reference policy's, under each
        iteration's masks (`per_iteration`) or iteration 0's. Each update's scores share their key's mask seeds,
        so the first update's ratio is exactly 1."""
        old: dict[tuple[int, int], torch.Tensor] = {}
        ref: dict[tuple[int, int], torch.Tensor] = {}
        for j, mb in enumerate(batches):
            for it in range(self.cfg.learner.mu if self._per_iteration else 1):
                old[it, j] = self._scores(self.engine, mb, step, it)
                if self.ref_model is not None:
                    ref[it, j] = self._scores(self.ref_model, mb, step, it)
        return old, ref

    def _updates(self, batches: list[MicroBatch], old: dict, ref: dict, step: int, step_tokens: int) -> tuple[dict, float]:
        """`mu` optimiser updates over this rank's micro-batches; statistics summed over ranks.

        DeepSpeed accumulates the micro-batches' gradients and steps the optimiser once per iteration
        (gradient_accumulation_steps = this rank's micro-batches, `deepspeed_config`), so every micro-batch of
        iteration `it` is scored under the same weights: the policy after `it` updates."""
        lc = self.cfg.learner
        per_step = lc.loss_norm == "step_tokens"
        sums = torch.zeros(len(STAT_KEYS) + 1, dtype=torch.float64)  # + the rollout log-prob gap
        grad_norm = 0.0
        for it in range(lc.mu):
            for j, mb in enumerate(batches):
                key = (it, j) if self._per_iteration else (0, j)
                scores = self._scores(self.engine, mb, step, it)  # [b, K]
                if it == 0 and mb.rollout_logprobs is not None:  # |learner - vLLM| summed over tokens, / step's
                    gap = (old[key] - mb.rollout_logprobs).abs() * mb.completion_mask
                    sums[-1] += float(gap.sum()) / step_tokens
                mb_tokens = int(mb.completion_mask.sum())
                loss, stats = grpo_loss(scores, old[key], ref.get(key), mb.advantages, mb.completion_mask,
                                        eps=lc.clip_eps, beta=lc.kl_beta, tokens=step_tokens if per_step else None)
                if per_step:  # token sum / N_step; undo DeepSpeed's 1/world averaging, skip its 1/GAS
                    self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
                else:
                    self.engine.backward(loss)
                self.engine.step()
                share = 1.0 if per_step else mb_tokens / step_tokens  # -> this micro-batch's part of the step mean
                sums[:-1] += torch.tensor([float(loss.detach()), *(stats[k] for k in STAT_KEYS[1:])]) * share
            grad_norm = float(self.engine.get_global_grad_norm() or 0.0)
        if self.world_size > 1:  # the step's token means: each rank holds its share of them
            sums = sums.to(self.device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        if self.ref_model is not None and lc.ref_update_every > 0 and (step + 1) % lc.ref_update_every == 0:
            update_reference(self.ref_model, self.engine.module, mode=lc.ref_update, mix=lc.ref_mix)
        means = {k: float(v) / lc.mu for k, v in zip(STAT_KEYS, sums)}  # each update's, averaged over the mu
        if batches[0].rollout_logprobs is not None:  # taken once, in the first update
            means["rollout_logprob_gap"] = float(sums[-1])
        return means, grad_norm

    # ----------------------------------------------------------------- weights, checkpoints
    def _full_state(self) -> dict | None:
        """The full state dict on rank 0, None on the others (every rank must call this under ZeRO-3)."""
        if self.cfg.learner.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.engine.module.state_dict()
        return sd if self.rank == 0 else None

    def export_weights(self) -> dict | None:
        """The full state dict on rank 0 as CPU tensors, for the object store (every rank joins under ZeRO-3)."""
        sd = self._full_state()
        return None if sd is None else {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}

    def weight_layout(self) -> Layout:
        """(name, dtype, shape) of every tensor rank 0 sends (every rank joins under ZeRO-3)."""
        sd = self._full_state()
        return None if sd is None else layout_of(sd)

    def join_weight_group(self, master_port: int, size: int, name: str, layout: Layout, bucket_mb: float,
                          timeout_s: float) -> str:
        """Rank 0: become member 0 of weight-sync group `name` (the rollout workers join concurrently)."""
        self.leave_weight_group()
        self.weight_group = BroadcastMember(
            ray.util.get_node_ip_address(), master_port, 0, size, backend="nccl" if self.device.type == "cuda"
            else "gloo", device=self.device, layout=layout, bucket_bytes=int(bucket_mb * 2**20),
            timeout_s=timeout_s, name=name)
        return name

    def leave_weight_group(self) -> None:
        if self.weight_group is not None:
            self.weight_group.close()
            self.weight_group = None

    def broadcast_weights(self, version: int) -> dict | None:
        """Rank 0 sends the current weights, stamped `version`, to its weight-sync group; every rank joins the
        gather under ZeRO-3. Returns rank 0's sync statistics."""
        sd = self._full_state()
        if sd is None:
            return None
        if self.weight_group is None:
            raise RuntimeError("learner-0: broadcast_weights before join_weight_group")
        return vars(self.weight_group.send(sd, version))

    def save_checkpoint(self, ckpt_root: str, tag: str, policy_dir: str, reference_file: str,
                        client_state: dict) -> list[str]:
        """Save this rank's DeepSpeed shard, its RNG states and the trained group ids; rank 0 also writes the
        policy as an HF directory (`policy_dir`) and the reference model (`reference_file`). Returns (rank 0)
        the stream entries this checkpoint covers, to be acknowledged once every rank has saved."""
        state = {**client_state, "trained_group_ids": sorted(self.trained_group_ids),
                 "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                         "torch": torch.get_rng_state()}}
        # save_latest=False: the driver moves `latest` itself, once the whole checkpoint is on disk
        self.engine.save_checkpoint(ckpt_root, tag=tag, client_state=state, save_latest=False)
        if self.cfg.learner.zero_stage == 3:
            self.engine.save_16bit_model(policy_dir, "pytorch_model.bin")
        if self.rank == 0:
            if self.cfg.learner.zero_stage == 3:
                self.engine.module.config.save_pretrained(policy_dir)
                self.tokenizer.save_pretrained(policy_dir)
            else:
                self.policy.save(self.engine.module, self.tokenizer, policy_dir)
            if self.ref_model is not None:
                torch.save(self.ref_model.state_dict(), reference_file)
        covered, self.consumed_entries = self.consumed_entries, []
        return covered

    def _load_checkpoint(self, ckpt_root: str, tag: str, reference_file: str | None = None) -> None:
        _, state = self.engine.load_checkpoint(ckpt_root, tag=tag, load_optimizer_states=True,
                                               load_lr_scheduler_states=True)
        if state is None:
            raise RuntimeError(f"learner-{self.rank}: no DeepSpeed checkpoint {tag} in {ckpt_root}")
        self.trained_group_ids = set(state["trained_group_ids"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.ref_model is not None and reference_file and Path(reference_file).is_file():
            self.ref_model.load_state_dict(torch.load(reference_file, weights_only=True))


Learner = ray.remote(LearnerImpl)
