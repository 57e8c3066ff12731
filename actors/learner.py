"""Learner: one DeepSpeed rank of coupled-GRPO training, run as a Ray actor named `learner-<rank>`.

Per step: rank 0 reads B scored groups from the trajectory stream and shares them with the other
ranks; every rank takes its contiguous shard of the B*G sequences, computes advantages, the old and
reference scores with the shared mask seeds, and runs `mu` optimiser updates. Weights leave through
`export_weights` (rank 0, one object) and checkpoints through DeepSpeed's own save/load.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import ray
import torch
import torch.distributed as dist

from actors.dllm import (build_model, generate, grpo_advantages, grpo_loss, left_pad, save_model,
                         token_scores, update_reference)


def mask_seed(run_seed: int, step: int, iteration: int, micro_batch: int) -> int:
    """The mask seed shared by the old, reference and current scores of one micro-batch."""
    key = f"{run_seed}:{step}:{iteration}:{micro_batch}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def lr_lambda(cfg_learner, total_updates: int):
    """Linear warm-up, then cosine from 1 to `min_lr_ratio` (or constant)."""
    warmup, floor = cfg_learner.warmup_steps, cfg_learner.min_lr_ratio

    def factor(update: int) -> float:
        if warmup and update < warmup:
            return (update + 1) / warmup
        if cfg_learner.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (update - warmup) / max(1, total_updates - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _skip_shm_build() -> None:
    """DeepSpeed JIT-compiles a shared-memory all-reduce op on CPU (25-45 s) that training never uses."""
    import deepspeed.comm  # noqa: F401  (loads the module deepspeed.comm.torch)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def deepspeed_config(cfg, world_size: int) -> dict:
    lc = cfg.learner
    n_sequences = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    return {
        "train_batch_size": n_sequences,
        "train_micro_batch_size_per_gpu": lc.micro_batch_size,
        "gradient_accumulation_steps": n_sequences // (lc.micro_batch_size * world_size),
        "gradient_clipping": lc.grad_clip,
        "zero_optimization": {"stage": lc.zero_stage},
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class LearnerImpl:
    def __init__(self, cfg, model_dir: str, rank: int, world_size: int, master_port: int, open_stream,
                 resume_from: tuple[str, str] | None = None):
        """`resume_from`: (checkpoint root, tag) to continue from; `model_dir` is then that checkpoint's policy."""
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0", LOCAL_SIZE="1")
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        _skip_shm_build()
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo", verbose=False)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        lc = cfg.learner

        model, self.tokenizer = build_model(model_dir)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        self.mask_id = self.tokenizer.mask_token_id
        self.ref_model = None
        if lc.kl_beta > 0:
            self.ref_model, _ = build_model(model_dir)
            self.ref_model.eval().requires_grad_(False)
            if cfg.model.dtype == "bfloat16":
                self.ref_model.to(torch.bfloat16)

        optimizer = torch.optim.AdamW(model.parameters(), lr=lc.lr, betas=tuple(lc.adam_betas),
                                      weight_decay=lc.weight_decay)
        total_updates = cfg.run.steps * lc.mu
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(lc, total_updates))
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(cfg, world_size))
        self.stream = open_stream() if rank == 0 else None
        self.consumed_entries: list[str] = []  # consumed since the last checkpoint, acknowledged after it
        self.trained_group_ids: set[str] = set()  # every group trained on, as of the latest step
        self._first_read = True
        if resume_from is not None:
            self._load_checkpoint(*resume_from)

    # ----------------------------------------------------------------- data
    def _read_groups(self, count: int, timeout_s: float) -> list[tuple[str, dict]]:
        """`count` groups never trained on. A second copy of a group (a re-issued rollout whose first try
        was published after all) is acknowledged and dropped, so no group is trained on twice."""
        got: list[tuple[str, dict]] = []
        seen = set(self.trained_group_ids)
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"learner waited {timeout_s:.0f}s for {count} groups, got {len(got)}")
            # replay this consumer's unacknowledged entries only on the first read after a (re)start
            entries = self.stream.read(count - len(got), consumer="learner", block_ms=1000,
                                       replay=self._first_read)
            self._first_read = False
            duplicates = [eid for eid, rec in entries if rec["group_id"] in seen]
            self.stream.ack(duplicates)
            for eid, rec in entries:
                if rec["group_id"] not in seen:
                    seen.add(rec["group_id"])
                    got.append((eid, rec))
        return got

    def _shared_groups(self, count: int, timeout_s: float) -> list[tuple[str, dict]]:
        box = [self._read_groups(count, timeout_s) if self.rank == 0 else None]
        if self.world_size > 1:
            dist.broadcast_object_list(box, src=0)
        return sorted(box[0], key=lambda e: e[1]["group_id"])

    def _micro_batches(self, groups: list[dict]):
        """Flatten B groups into B*G sequences, keep this rank's contiguous shard, cut micro-batches."""
        rewards = torch.tensor([g["rewards"] for g in groups], dtype=torch.float32)  # [B, G]
        lc = self.cfg.learner
        adv = grpo_advantages(rewards, baseline=lc.advantage, scale_std=lc.scale_std).flatten()  # [B*G]
        rows = [(g["prompt_ids"], comp, cm)
                for g in groups for comp, cm in zip(g["completion_ids"], g["completion_mask"])]
        items = [(*row, float(a)) for row, a in zip(rows, adv)]
        per_rank = len(items) // self.world_size
        shard = items[self.rank * per_rank:(self.rank + 1) * per_rank]
        mbs = lc.micro_batch_size
        batches = []
        for s in range(0, len(shard), mbs):
            chunk = shard[s:s + mbs]
            prompt_ids, prompt_mask = left_pad([c[0] for c in chunk], self.tokenizer.pad_token_id)
            completion = torch.tensor([c[1] for c in chunk], dtype=torch.long)       # [b, K]
            input_ids = torch.cat([prompt_ids, completion], dim=1)                     # [b, P+K]
            attention_mask = torch.cat([prompt_mask, torch.ones_like(completion)], 1)  # [b, P+K]
            batches.append({
                "input_ids": input_ids, "attention_mask": attention_mask,
                "completion_mask": torch.tensor([c[2] for c in chunk], dtype=torch.bool),  # [b, K]
                "advantages": torch.tensor([c[3] for c in chunk], dtype=torch.float32),   # [b]
            })
        return batches, rewards

    def _scores(self, model, mb: dict, seed: int) -> torch.Tensor:
        return token_scores(model, mb["input_ids"], mb["attention_mask"], mb["completion_mask"],
                            estimator=self.cfg.learner.estimator, seed=seed, mask_id=self.mask_id).scores

    # ----------------------------------------------------------------- one step
    def train_step(self, step: int, read_timeout_s: float = 900.0) -> dict:
        cfg, lc = self.cfg, self.cfg.learner
        t0 = time.perf_counter()
        entries = self._shared_groups(cfg.rollout.prompts_per_step, read_timeout_s)
        groups = [rec for _, rec in entries]
        self.consumed_entries += [eid for eid, _ in entries]
        self.trained_group_ids.update(rec["group_id"] for rec in groups)
        batches, rewards = self._micro_batches(groups)
        t_read = time.perf_counter() - t0

        def seed_of(it: int, j: int) -> int:
            return mask_seed(cfg.run.seed, step, it if lc.mask_seed_policy == "per_iteration" else 0, j)

        t0 = time.perf_counter()
        old: dict[tuple[int, int], torch.Tensor] = {}
        ref: dict[tuple[int, int], torch.Tensor] = {}
        with torch.no_grad():
            for j, mb in enumerate(batches):
                for it in range(lc.mu):
                    key = (it, j)
                    if it > 0 and lc.mask_seed_policy == "per_iteration":
                        old[key] = self._scores(self.engine, mb, seed_of(it, j))
                    if self.ref_model is not None and (it == 0 or lc.mask_seed_policy == "per_iteration"):
                        ref[key] = self._scores(self.ref_model, mb, seed_of(it, j))
        t_score = time.perf_counter() - t0

        t0 = time.perf_counter()
        sums = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "ratio_mean": 0.0}
        grad_norms = []
        n = 0
        for it in range(lc.mu):
            for j, mb in enumerate(batches):
                s = self._scores(self.engine, mb, seed_of(it, j))
                key = (it, j) if lc.mask_seed_policy == "per_iteration" else (0, j)
                if it == 0:
                    old[key] = s.detach()
                ref_s = ref.get(key)
                loss, stats = grpo_loss(s, old[key], ref_s, mb["advantages"], mb["completion_mask"],
                                        eps=lc.clip_eps, beta=lc.kl_beta)
                self.engine.backward(loss)
                self.engine.step()
                sums["loss"] += float(loss.detach())
                for k in ("kl", "clip_fraction", "ratio_mean"):
                    sums[k] += float(stats.get(k, 0.0))
                n += 1
            grad_norms.append(float(self.engine.get_global_grad_norm() or 0.0))
        if self.ref_model is not None and lc.ref_update_every > 0 and (step + 1) % lc.ref_update_every == 0:
            update_reference(self.ref_model, self.engine.module, mode=lc.ref_update, mix=lc.ref_mix)
        t_train = time.perf_counter() - t0

        stats = {k: v / max(1, n) for k, v in sums.items()}
        stats.update(grad_norm=grad_norms[-1], lr=float(self.scheduler.get_last_lr()[0]),
                     time_read=t_read, time_score=t_score, time_train=t_train,
                     groups=[{"entry_id": eid, "group_id": rec["group_id"], "prompt_id": rec["prompt_id"],
                              "version_start": rec["version_start"]} for eid, rec in entries],
                     zero_var_frac=float((rewards.std(dim=1) == 0).float().mean()))
        return stats

    # ----------------------------------------------------------------- weights, checkpoints
    def export_weights(self) -> dict | None:
        """The full state dict on rank 0 (every rank must call this under ZeRO-3)."""
        if self.cfg.learner.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.engine.module.state_dict()
        if self.rank != 0:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}

    def checksum(self) -> float:
        with torch.no_grad():
            return float(sum(p.detach().double().sum() for p in self.engine.module.parameters()))

    def greedy(self, prompts: list[str], max_new_tokens: int, steps: int) -> list[list[int]]:
        model = self.engine.module
        was_training = model.training
        model.eval()
        out = generate(model, self.tokenizer, prompts, max_new_tokens=max_new_tokens, steps=steps,
                       temperature=0.0, alg=self.cfg.rollout.alg, alg_temp=0.0)
        model.train(was_training)
        return out.completion_ids.tolist()

    def save_checkpoint(self, ckpt_dir: str, tag: str, client_state: dict) -> list[str]:
        """Save this rank's DeepSpeed shard, its RNG states and the trained group ids; rank 0 also writes the
        reference model and the policy as an HF directory (`<tag>/policy`). Returns (rank 0) the stream
        entries that this checkpoint covers, to be acknowledged once every rank has saved."""
        state = {**client_state, "trained_group_ids": sorted(self.trained_group_ids),
                 "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                         "torch": torch.get_rng_state()}}
        # save_latest=False: the driver moves `latest` itself, once the whole checkpoint is on disk
        self.engine.save_checkpoint(ckpt_dir, tag=tag, client_state=state, save_latest=False)
        tag_dir = Path(ckpt_dir) / tag
        if self.cfg.learner.zero_stage == 3:
            self.engine.save_16bit_model(str(tag_dir / "policy"), "pytorch_model.bin")
        if self.rank == 0:
            if self.cfg.learner.zero_stage == 3:
                self.engine.module.config.save_pretrained(tag_dir / "policy")
                self.tokenizer.save_pretrained(tag_dir / "policy")
            else:
                save_model(self.engine.module, self.tokenizer, tag_dir / "policy")
            if self.ref_model is not None:
                torch.save(self.ref_model.state_dict(), tag_dir / "reference_model.pt")
        covered, self.consumed_entries = self.consumed_entries, []
        return covered

    def _load_checkpoint(self, ckpt_dir: str, tag: str) -> None:
        _, state = self.engine.load_checkpoint(ckpt_dir, tag=tag, load_optimizer_states=True,
                                               load_lr_scheduler_states=True)
        if state is None:
            raise RuntimeError(f"learner-{self.rank}: no DeepSpeed checkpoint {tag} in {ckpt_dir}")
        self.trained_group_ids = set(state["trained_group_ids"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        ref_file = Path(ckpt_dir) / tag / "reference_model.pt"
        if self.ref_model is not None and ref_file.is_file():
            self.ref_model.load_state_dict(torch.load(ref_file, weights_only=True))

    def ack(self, entry_ids: list[str]) -> int:
        if self.rank == 0 and entry_ids:
            self.stream.ack(entry_ids)
        return len(entry_ids)


Learner = ray.remote(LearnerImpl)
