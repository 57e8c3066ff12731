"""GPU check: what a cluster user asks first, on one GPU with random-init weights of the real shapes (none can be
downloaded), bf16. Not a test: it prints what it measured, a line per measurement as it goes and a table at the
end, and asserts nothing.

    bash benchmarks/gpu_check.sh                     # on a GPU machine: at most 8 minutes on one H100 / H200
    bash benchmarks/gpu_check.sh --kit .gpu-kit      # on a bare GPU node (benchmarks/gpu_kit.py)
    bash benchmarks/gpu_check.sh --cpu-dry-run       # every section at toy shapes, fp32 on CPU (minutes)

Shapes: "7B" is DiffuCoder-7B's (a Qwen2.5-7B: hidden 3584, 28 layers, 28 heads / 4 KV, intermediate 18944, vocab
152064, untied head); "1.5B" is Qwen2.5-1.5B's (tied, vocab 151936). The BPE is trained on the toy data; the
model keeps the full vocab. Lengths are the paper's rollout: 200 prompt tokens, a 256-token canvas. Sections, in
order (each prints its lines as it measures; one that fails prints one line and the others still run; one the
budget cannot cover prints "skipped"):

  decode   7B, batches of 10 and 40 rows: the reference decoder (256 steps; every step is the same full forward
           of the canvas, so it is timed over its first REF_FORWARDS forwards and scaled to 256), against the fast
           decoder (blocks of 32) with the prefix and the dual cache. A random model is never confident, so the
           fast decoder is also forced to reveal 1, 2 and 4 tokens per forward (generate_fast's min_tokens; 1 is
           what threshold 0.9 gives a random model): tokens/s of each, the cost curve of rollout time at 7B
  learner  coupled-GRPO steps of the real learner (actors.learner.LearnerImpl, DeepSpeed ZeRO-2, bf16, torch's
           AdamW, micro-batches of 4, mu = 2, KL to a reference copy) on the 1.5B shape and on the 7B shape
           (gradient checkpointing, as configs/diffucoder_7b.yaml) with as many layers as
           orchestrator/memory_plan.py says fit in 85% of the GPU: the coupled estimator (3 forward copies per row) against d1 (1 copy), each
           STEPS steps (the first warms up): tokens/s and model FLOPs utilisation,
           MFU = 6 x parameters x sequence tokens x copies / train seconds / the card's dense bf16 peak
  memory   the peaks measured above (torch.cuda.max_memory_allocated, less what was allocated before) against
           orchestrator/memory_plan.py's estimate for the same config; the target is within 25%
  sync     the object-store weight sync of the 1.5B and 7B shapes between two actors on the GPU (GPU -> host ->
           object store -> GPU, weights.sync=object_store): seconds per sync, the median of 3 after a warm-up
  loop     `diffurl train` for STEPS steps at the 1.5B shape (orchestrator.run.train, in this process): one learner
           rank (1 GPU) and two rollout workers sharing it, step time and its phases from metrics.jsonl
  adam     whether DeepSpeed's fused Adam (a CUDA extension, built just in time by ninja and nvcc) compiles here,
           and how long that takes; the learner keeps torch's AdamW (fused kernels of its own, nothing to build)

--budget-s (default 420): a section starts only while the budget covers its estimated time. --cpu-dry-run: the
same sections at toy shapes (hidden 64 and 128, 2 layers, vocab 512), fp32 on CPU, 48 prompt tokens, a 32-token
canvas in blocks of 16.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch
import transformers
from transformers import Qwen2Config

from actors.dllm import DiffusionQwen2ForCausalLM, generate, generate_fast, save_model, train_tokenizer
from actors.dllm.tokenizer import SPECIAL_TOKENS
from actors.trajectory import CompletionReward, DecodeStats, Trajectory
from actors.weight_sync import free_port_here, state_digest
from orchestrator.config import load_config
from orchestrator.data import load_prompts
from orchestrator.errors import one_line
from orchestrator.memory_plan import PASSES, ModelShape, gib, learner_memory, rollout_memory
from orchestrator.metrics import read_metrics
from orchestrator.placement import ACTOR_ENV
from orchestrator.run import tokenizer_corpus, train

REPO_ROOT = Path(__file__).resolve().parent.parent
QWEN = dict(max_position_embeddings=32768, rope_theta=1e6)
SHAPES = {
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, **QWEN),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, **QWEN),
}
TOY = dict(vocab_size=512, max_position_embeddings=512, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2)
TOY_SHAPES = {"1.5B": dict(hidden_size=64, intermediate_size=128, tie_word_embeddings=True, **TOY),
              "7B": dict(hidden_size=128, intermediate_size=256, tie_word_embeddings=False, **TOY)}
BATCHES = (10, 40)  # decode rows: one prompt's group of 10, four of them
FORCED = (1, 2, 4)  # tokens per forward forced on the fast decoder
REF_FORWARDS = 16  # reference decoder forwards timed (of its 256)
STEPS = 3  # learner and loop steps; the first one warms up
REPEATS = 3  # timed syncs (median)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}  # dense, no sparsity (datasheets)
ROWS: list[tuple[str, str, str]] = []  # (section, what, value): the final table


def report(section: str, what: str, value: str, detail: str = "") -> None:
    ROWS.append((section, what, value))
    print(f"{section:<7} {what}: {value}" + (f"  ({detail})" if detail else ""), flush=True)


@dataclass
class Check:
    """What every section shares: the device, the shapes, a tokenizer, a scratch folder and the peaks."""
    device: torch.device
    shapes: dict
    toy: bool
    root: Path
    deadline: float  # the running section's
    tokenizer: object = None
    peaks: dict[str, tuple[int, object]] = field(default_factory=dict)  # role -> (bytes measured, plan)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        """Seconds left of the running section's share of the budget."""
        return self.deadline - time.monotonic()

    def config(self, model_dir: Path | str = "", **overrides):
        """configs/demo.yaml at the paper's rollout lengths (toy lengths in a dry run), fast decoder, ZeRO-2."""
        lengths = dict(prompt=48, canvas=32, block=16) if self.toy else dict(prompt=200, canvas=256, block=32)
        device = (["run.device=cuda", "learner.gpus_per_rank=1", "rollout.gpus_per_worker=0.5",
                   "model.dtype=bfloat16"] if self.cuda else ["run.device=cpu"])
        dotlist = [f"model.path={model_dir or self.root / 'unused'}", f"run.root_dir={self.root}",
                   "run.name=gpu_check", f"run.steps={STEPS}", f"run.checkpoint_every={STEPS}",
                   "run.keep_checkpoints=1", f"data.max_prompt_tokens={lengths['prompt']}",
                   f"rollout.max_new_tokens={lengths['canvas']}", f"rollout.steps={lengths['canvas']}",
                   f"rollout.block_length={lengths['block']}", "rollout.decoder=fast", "rollout.threshold=0.9",
                   "rollout.cache=prefix", "rollout.num_workers=2", "rollout.group_size=8",
                   "rollout.prompts_per_step=2", "learner.micro_batch_size=4", "learner.mu=2",
                   "weights.sync=object_store", "metrics.tensorboard=false", "metrics.progress_bar=false", *device]
        return load_config(REPO_ROOT / "configs" / "demo.yaml", dotlist + [f"{k}={v}" for k, v in overrides.items()])

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cuda else torch.float32

    def model(self, dims: dict) -> DiffusionQwen2ForCausalLM:
        return random_model(dims, self.device, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)

    def saved(self, name: str, dims: dict) -> Path:
        """The model of shape `dims` saved as an HF directory (what the learner and the loop load)."""
        model_dir = self.root / f"model-{name}"
        if not (model_dir / "config.json").exists():
            model = self.model(dims)
            save_model(model, self.tokenizer, model_dir)
            del model
            _free(self.device)
        return model_dir

    def measure(self, role: str, base: int, plan) -> None:
        if self.cuda:
            self.peaks[role] = (torch.cuda.max_memory_allocated() - base, plan)


def random_model(dims: dict, device: torch.device, pad_id: int, eos_id: int | None = None) -> DiffusionQwen2ForCausalLM:
    """A random-init model of shape `dims` (seed 0), created on `device` in bf16 there, fp32 on CPU: no host
    copy of 7B."""
    config = Qwen2Config(**dims, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=eos_id)
    cuda = device.type == "cuda"
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if cuda else torch.float32)
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if cuda else []), device:
            torch.manual_seed(0)
            return DiffusionQwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)


def describe(dims: dict) -> str:
    shape = ModelShape.from_config(dims)
    n = shape.parameters
    size = f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
    return f"{size} parameters, {shape.num_hidden_layers} layers"


# ----------------------------------------------------------------------------------------- the sections

def section_decode(check: Check) -> None:
    """7B shape, BATCHES rows: the reference decoder, then the fast one with each cache at FORCED tokens per
    forward. A run whose time, estimated from the runs before it, would overrun the section's share is skipped."""
    dims = check.shapes["7B"]
    cfg = check.config()
    ro = cfg.rollout
    base = _allocated(check.device)
    t0 = time.perf_counter()
    model = check.model(dims)
    report("decode", "model", f"7B shape: {describe(dims)}", f"random init on {check.device} in "
           f"{time.perf_counter() - t0:.1f} s, {check.dtype}".replace("torch.", ""))
    generator = torch.Generator().manual_seed(0)
    K, P = ro.max_new_tokens, cfg.data.max_prompt_tokens
    took: dict[tuple, float] = {}  # (rows, cache or "reference", k) -> seconds

    def estimate(rows: int, cache: str, k: int) -> float:
        if (rows, cache, 1) in took:
            return took[rows, cache, 1] / k
        smaller = [(r, t) for (r, c, kk), t in took.items() if c == cache and kk == k and r < rows]
        return max((t * rows / r for r, t in smaller), default=0.0)

    for rows in BATCHES:
        plan = rollout_memory(check.config(**{"rollout.group_size": rows, "rollout.prompts_per_step": 1,
                                              "rollout.num_workers": 1, "learner.micro_batch_size": 1}),
                              ModelShape.from_config(dims), check.device.type)
        prompts = [torch.randint(len(SPECIAL_TOKENS), len(check.tokenizer), (P,), generator=generator).tolist()
                   for _ in range(rows)]
        seeds = list(range(rows))
        common = dict(max_new_tokens=K, temperature=ro.temperature, top_p=ro.top_p, alg=ro.alg)
        reference = None
        for cache, k in [("reference", 1)] + [(c, k) for c in ("prefix", "dual") for k in FORCED]:
            what = f"{rows} rows, " + (f"reference, {K} steps" if cache == "reference" else f"fast {cache}, {k}/forward")
            need = estimate(rows, cache, k)
            if check.left() < max(need, 5):
                report("decode", what, "skipped", f"{check.left():.0f} s of the section's share left" +
                       (f", needs ~{need:.0f} s" if need else ""))
                continue
            if not took:  # warm-up (kernels, allocator), untimed
                generate_fast(model, check.tokenizer, prompts, **{**common, "max_new_tokens": 8}, seed=seeds)
            _reset_peak(check.device)
            if cache == "reference":
                seconds = _timed(check.device, lambda: generate(model, check.tokenizer, prompts, **common,
                                                                steps=REF_FORWARDS, seed=0))
                took[rows, cache, k] = seconds
                reference = rows * K / (seconds / REF_FORWARDS * K)
                check.measure(f"rollout, 7B, {rows} rows, reference decoder", base, plan)
                report("decode", what, f"{reference:,.1f} tokens/s",
                       f"{seconds / REF_FORWARDS * 1e3:.0f} ms per forward of {rows} x {P + K} tokens, timed over "
                       f"{REF_FORWARDS} of its {K} forwards")
                continue
            out = []
            seconds = _timed(check.device, lambda: out.append(generate_fast(
                model, check.tokenizer, prompts, **common, threshold=ro.threshold, block_length=ro.block_length,
                cache=cache, min_tokens=k, stop_at_end=False, seed=seeds)))
            took[rows, cache, k] = seconds
            forwards = out[0].forwards
            if k == 1:
                check.measure(f"rollout, 7B, {rows} rows, fast decoder ({cache} cache)", base, plan)
            speed = rows * K / seconds
            versus = f"{speed / reference:.1f}x the reference; " if reference else ""
            report("decode", what, f"{speed:,.1f} tokens/s",
                   f"{versus}{forwards} forwards, {seconds / forwards * 1e3:.0f} ms each; blocks of "
                   f"{ro.block_length}" + (f", threshold {ro.threshold:g} (never reached by a random model: "
                                           f"this is the threshold's row)" if k == 1 else ""))


class RandomGroups:
    """Stands in for the trajectory stream: every read is new groups of random prompts and full-length random
    completions with rewards 0, 1, 2 (so advantages are not zero)."""

    def __init__(self, cfg, vocab: int):
        self.cfg, self.vocab, self.issued = cfg, vocab, 0

    def read(self, count: int, **_) -> list[tuple[str, Trajectory]]:
        groups = [self.group(self.issued + i) for i in range(count)]
        self.issued += count
        return [(f"{i}-0", g) for i, g in enumerate(groups, self.issued - count)]

    def ack(self, entry_ids) -> None:
        pass

    def group(self, index: int) -> Trajectory:
        G, K, P = self.cfg.rollout.group_size, self.cfg.rollout.max_new_tokens, self.cfg.data.max_prompt_tokens
        ids = torch.randint(len(SPECIAL_TOKENS), self.vocab, (G + 1, max(P, K)),
                            generator=torch.Generator().manual_seed(index))
        return Trajectory(
            run_id="gpu-check", group_id=f"g{index:08d}", prompt_id=f"random/{index}", worker_id="random",
            canary_bound=None, prompt_ids=ids[0, :P].tolist(), completion_ids=ids[1:, :K].tolist(),
            completion_mask=[[1] * K] * G, texts=[""] * G,
            rewards=[CompletionReward(reward=float(j % 3), status="failed", pass_rate=0.0, format=0.0)
                     for j in range(G)],
            version_start=0, version_end=0,
            decode=DecodeStats(decoder="fast", alg="entropy", temperature=1.0, steps=K, max_new_tokens=K,
                               order=[list(range(K))] * G, local_arness=1.0, global_arness=1.0, forwards=K,
                               tokens_per_forward=1.0, batch_rows=G),
            time_generate=0.0, time_reward=0.0)


RECIPE = {"1.5B": {}, "7B": {"model.gradient_checkpointing": True}}  # 7B: as configs/diffucoder_7b.yaml


def learner_layers(check: Check, dims: dict, overrides: dict) -> int:
    """The most layers of `dims` whose learner rank the memory plan puts within 85% of this GPU (CPU: all)."""
    if not check.cuda:
        return dims["num_hidden_layers"]
    total = torch.cuda.mem_get_info()[1]
    cfg = check.config(**overrides)
    fits = [n for n in range(1, dims["num_hidden_layers"] + 1)
            if learner_memory(cfg, ModelShape.from_config({**dims, "num_hidden_layers": n}), "cuda").total
            <= 0.85 * total]
    return max(fits, default=0)


def section_learner(check: Check) -> None:
    from actors.learner import LearnerImpl

    peak = _peak_flops(check.device)
    took: dict[str, tuple[float, int]] = {}  # estimator -> (seconds, parameters) of the last shape
    for name in ("1.5B", "7B"):
        dims = dict(check.shapes[name])
        layers = learner_layers(check, dims, RECIPE[name])
        if layers == 0:
            report("learner", name, "does not fit", "not one layer fits the plan in 85% of this GPU")
            continue
        label = (name if layers == dims["num_hidden_layers"]
                 else f"{name}, {layers} of {dims['num_hidden_layers']} layers")
        dims["num_hidden_layers"] = layers
        params = ModelShape.from_config(dims).parameters
        model_dir = None
        for estimator in ("coupled", "d1"):
            need = took[estimator][0] * params / took[estimator][1] if estimator in took else 0.0
            if check.left() < max(need, 15):
                report("learner", f"{label}, {estimator}", "skipped", f"{check.left():.0f} s of the section's "
                       f"share left" + (f", needs ~{need:.0f} s" if need else ""))
                continue
            t0 = time.monotonic()
            model_dir = model_dir or check.saved(f"learner-{name}-{layers}", dims)
            cfg = check.config(model_dir, **{"learner.estimator": estimator, **RECIPE[name]})
            base = _allocated(check.device)
            _reset_peak(check.device)
            learner = LearnerImpl(cfg, rank=0, world_size=1, device=check.device.type)
            try:
                stream = RandomGroups(cfg, len(check.tokenizer))
                learner.setup("127.0.0.1", free_port_here(), str(model_dir), lambda: stream)
                stats = [learner.train_step(step) for step in range(STEPS)]
                check.measure(f"learner, {label}, {estimator}", base,
                              learner_memory(cfg, ModelShape.from_config(dims), check.device.type))
            finally:
                _close_learner(learner)
            ro, le = cfg.rollout, cfg.learner
            sequences = ro.prompts_per_step * ro.group_size * le.mu
            tokens = sequences * (cfg.data.max_prompt_tokens + ro.max_new_tokens)
            timed = stats[1:]
            train_s = sum(s["time_train"] for s in timed) / len(timed)
            mfu = (f"MFU {6 * params * tokens * PASSES[estimator] / train_s / peak:.1%}" if peak else "MFU n/a")
            report("learner", f"{label}, {estimator}", f"{tokens / train_s:,.0f} tokens/s, {mfu}",
                   f"{describe(dims)}; {sequences} sequences of {tokens // sequences} tokens per step "
                   f"({PASSES[estimator]} forward cop{'y' if PASSES[estimator] == 1 else 'ies'} each) in "
                   f"{train_s:.2f} s train + "
                   f"{sum(s['time_score'] for s in timed) / len(timed):.2f} s score; ZeRO-{le.zero_stage}, "
                   f"micro-batches of {le.micro_batch_size}, "
                   f"{'gradient checkpointing, ' if cfg.model.gradient_checkpointing else ''}steps 2-{STEPS}")
            _free(check.device)
            took[estimator] = (time.monotonic() - t0, params)


def section_memory(check: Check) -> None:
    if not check.cuda:
        report("memory", "peaks", "n/a on CPU", "torch.cuda.max_memory_allocated is what is compared")
        return
    if not check.peaks:
        report("memory", "peaks", "none measured", "decode and learner did not run")
    for role, (measured, plan) in check.peaks.items():
        ratio = measured / plan.total
        report("memory", role, f"{gib(measured)} measured / {gib(plan.total)} planned = {ratio:.2f}x "
               f"({'within' if abs(ratio - 1) <= 0.25 else 'OUTSIDE'} 25%)", f"plan: {plan.describe()}")


@ray.remote(num_cpus=0)
class SyncMember:
    """Learner rank 0's side (`export`, as the learner does) or a rollout worker's (`load`): a model on this
    actor's device."""

    def __init__(self, dims: dict, device: str, pad_id: int):
        torch.set_num_threads(1)
        self.device = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
        self.model = random_model(dims, self.device, pad_id)

    @torch.no_grad()
    def bump(self) -> None:
        for t in self.model.state_dict().values():
            t.add_(1)

    def export(self) -> dict:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def digest(self) -> str:
        return state_digest(self.model.state_dict())


def section_sync(check: Check) -> None:
    share = 0.5 if check.cuda else 0.0
    took: tuple[float, int] | None = None  # (seconds, parameters) of the last shape
    for name in ("1.5B", "7B"):
        dims = check.shapes[name]
        params = ModelShape.from_config(dims).parameters
        need = took[0] * params / took[1] if took else 0.0
        if check.left() < max(need, 10):
            report("sync", f"object store, {name}", "skipped", f"{check.left():.0f} s of the section's share "
                   f"left" + (f", needs ~{need:.0f} s" if need else ""))
            continue
        t0 = time.monotonic()
        members = [SyncMember.options(num_gpus=share).remote(dims, check.device.type, check.tokenizer.pad_token_id)
                   for _ in range(2)]
        sender, receiver = members
        try:
            ray.get(sender.bump.remote())
            seconds = []
            for i in range(REPEATS + 1):  # the first warms up
                t0 = time.perf_counter()
                ray.get(receiver.load.remote(sender.export.remote()))
                seconds.append(time.perf_counter() - t0)
            same = len(set(ray.get([m.digest.remote() for m in members]))) == 1
            median = sorted(seconds[1:])[REPEATS // 2]
            size = params * (2 if check.cuda else 4)
            report("sync", f"object store, {name}", f"{median:.2f} s per sync",
                   f"{describe(dims)}, {gib(size)}: {size / median / 2**30:.1f} GiB/s "
                   f"{'GPU -> host -> object store -> GPU' if check.cuda else 'on CPU'}, 1 receiver, "
                   f"{'receiver matches' if same else 'RECEIVER DIFFERS'}")
        finally:
            for m in members:
                ray.kill(m)
        took = (time.monotonic() - t0, params)


def section_loop(check: Check) -> None:
    """`diffurl train` for STEPS steps in this process, on the Ray main() started (train() uses a running one)."""
    cfg = check.config(check.saved("loop-1.5B", check.shapes["1.5B"]))
    run_dir = train(cfg, out=lambda *_: None)
    try:
        rows = read_metrics(run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # the checkpoint: GBs at these shapes
    timed = rows[1:]
    mean = lambda key: sum(r[key] for r in timed) / len(timed)  # noqa: E731
    ro, le = cfg.rollout, cfg.learner
    where = (f"1.5B, 1 learner rank (1 GPU) + {ro.num_workers} rollout workers ({ro.gpus_per_worker:g} GPU each)"
             if check.cuda else f"toy, 1 learner rank + {ro.num_workers} rollout workers on CPU")
    report("loop", "step", f"{mean('step_wall_s') - mean('time_checkpoint'):.2f} s",
           f"{where}, steps 2-{STEPS}, without checkpoints; final checkpoint {rows[-1]['time_checkpoint']:.2f} s")
    report("loop", "rollout", f"{mean('time_rollout_wall'):.2f} s",
           f"{mean('tokens_per_s'):,.0f} tokens/s per worker, fast decoder (threshold {ro.threshold:g})")
    report("loop", "learner", f"{mean('time_train'):.2f} s train + {mean('time_score'):.2f} s score",
           f"{mean('completion_len') * ro.prompts_per_step * ro.group_size * le.mu / mean('time_train'):,.0f} "
           f"completion tokens/s")
    report("loop", "sync", f"{mean('time_sync'):.2f} s", f"object store, to {ro.num_workers} workers")


def section_adam(check: Check) -> None:
    """DeepSpeed's FusedAdamBuilder().load() in a child process, cut at the section's share of the budget."""
    if not check.cuda:
        report("adam", "DeepSpeed fused Adam", "n/a on CPU", "a CUDA extension: built on a GPU node only")
        return
    env = {k: v for k, v in os.environ.items() if k != "DS_BUILD_OPS"}
    code = "from deepspeed.ops.op_builder import FusedAdamBuilder; FusedAdamBuilder().load(verbose=False)"
    limit = max(5.0, check.left())
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        report("adam", "DeepSpeed fused Adam", f"not built within {limit:.0f} s",
               "the section's share of the budget; the learner uses torch's AdamW, which needs no build")
        return
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        report("adam", "DeepSpeed fused Adam", "does not build", f"{last[:300]}; after {seconds:.0f} s. The "
               f"learner uses torch's AdamW")
        return
    report("adam", "DeepSpeed fused Adam", f"builds in {seconds:.0f} s",
           "ninja + nvcc, just in time; the learner uses torch's AdamW, which needs no build")


# ----------------------------------------------------------------------------------------- helpers

def _timed(device: torch.device, fn) -> float:
    _synchronize(device)
    t0 = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - t0


def _close_learner(learner) -> None:
    """Frees the engine's memory; the process group stays for the next learner (DeepSpeed keeps its groups)."""
    if getattr(learner, "engine", None) is not None:
        learner.engine.destroy()
    learner.engine = learner.scheduler = learner.ref_model = learner.stream = None


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated() if device.type == "cuda" else 0


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _start_ray(cuda: bool, gpus: int) -> None:
    """Ray for the sync and loop sections. One GPU: Ray counts 2 and leaves CUDA_VISIBLE_DEVICES alone, so the
    learner's whole GPU and the rollout workers' halves are all GPU 0 (a config cannot share a learner's GPU)."""
    logical = gpus
    if cuda and gpus == 1:
        os.environ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"  # the raylet and every worker inherit it
        logical = 2
    ray.init(num_cpus=max(2, os.cpu_count() or 2) if cuda else 2, num_gpus=logical, include_dashboard=False,
             log_to_driver=False, namespace="diffurl-gpu-check", runtime_env={"env_vars": ACTOR_ENV})


def _versions() -> str:
    import deepspeed

    return (f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"deepspeed {deepspeed.__version__}, ray {ray.__version__}")


def _table(rows) -> str:
    lines = ["| section | what | value |", "| --- | --- | --- |"]
    return "\n".join(lines + [f"| {' | '.join(c.replace('|', '/') for c in row)} |" for row in rows])


# name -> (function, the least time it starts with, its share of the budget). Each section may use its share of
# what is left, in proportion to the shares of the sections still to run, so time one leaves goes to the next.
SECTIONS = {"decode": (section_decode, 60, 0.35), "learner": (section_learner, 60, 0.25),
            "memory": (section_memory, 0, 0.0), "sync": (section_sync, 30, 0.1), "loop": (section_loop, 60, 0.2),
            "adam": (section_adam, 20, 0.1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="toy shapes, fp32 on CPU: every code path")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of all sections")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, in this order")
    args = parser.parse_args()
    started = time.monotonic()
    names = args.sections.split(",")
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"gpu_check: --sections: {unknown} unknown; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        sys.exit(2)
    cuda = not args.cpu_dry_run
    if cuda and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} ({sys.executable}) sees no GPU; on a GPU machine use a python "
              f"whose torch has CUDA, or run --cpu-dry-run", file=sys.stderr)
        sys.exit(2)
    gpus = torch.cuda.device_count() if cuda else 0
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(1)  # toy models: keep the machine free for the actors
    card = f"{gpus} x {torch.cuda.get_device_name(0)}" if cuda else "CPU dry run"
    print(f"gpu_check: {card}; {_versions()}; budget {args.budget_s:.0f} s", flush=True)
    root = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    end = started + args.budget_s
    check = Check(device, TOY_SHAPES if args.cpu_dry_run else SHAPES, args.cpu_dry_run, root, end)
    cfg = check.config()
    check.tokenizer = train_tokenizer(tokenizer_corpus(load_prompts(cfg.data.train)[0]), 2048 if cuda else 512)
    _start_ray(cuda, gpus)
    took = {}

    def overrun(*_):  # a section past the whole budget: it fails with one line and the table is still printed
        raise TimeoutError(f"past the budget of {args.budget_s:.0f} s")
    signal.signal(signal.SIGALRM, overrun)
    signal.alarm(int(max(1.0, end - time.monotonic())) + 15)
    try:
        for i, name in enumerate(names):
            fn, need, share = SECTIONS[name]
            left = end - time.monotonic()
            if left < need:
                report(name, "section", "skipped", f"{left:.0f} s of the budget left, needs ~{need} s")
                continue
            shares = sum(SECTIONS[n][2] for n in names[i:])
            check.deadline = time.monotonic() + (left * share / shares if shares else left)
            t0 = time.monotonic()
            try:
                fn(check)
            except Exception as e:  # noqa: BLE001 - one section's failure is one line; the others still run
                report(name, "section", f"FAILED: {one_line(e)[:200]}")
            finally:
                _free(device)
            took[name] = time.monotonic() - t0
            print(f"gpu_check: {name} took {took[name]:.0f} s", flush=True)
    finally:
        signal.alarm(0)
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{card}; {_versions()}; {time.strftime('%Y-%m-%d')}\n\n{_table(ROWS)}\n\ngpu_check: "
          f"{time.monotonic() - started:.0f} s (" + ", ".join(f"{k} {v:.0f}" for k, v in took.items()) + ")",
          flush=True)


if __name__ == "__main__":
    main()
