"""GPU check: random-init DiffuCoder-shaped models on one GPU, bf16: decode, learner and weight-sync speed, and
peak GPU memory against the plan's estimate. Not a test: it prints what it measured and asserts nothing.

    bash benchmarks/gpu_check.sh                          # on a GPU machine: at most 8 minutes on one H200
    bash benchmarks/gpu_check.sh --budget-s 300 --shapes 0.5B
    bash benchmarks/gpu_check.sh --cpu-dry-run            # every code path at toy sizes, fp32 on CPU (minutes)

Shapes: the Qwen2.5 0.5B and 1.5B config.json numbers (DiffuCoder-7B is a Qwen2.5-7B; these are its small
siblings: tied embeddings, vocab 151936), 0.5B first, then 1.5B if the budget allows. The BPE is trained on the
toy data (configs/data/toy_train.jsonl); the model keeps the full vocab. One config serves every section:
configs/demo.yaml with 200 prompt tokens, a 256-position canvas, 2 prompts x 8 completions per step, 2 rollout
workers, the fast decoder (threshold 0.9, blocks of 32, prefix cache), micro-batches of 4, mu = 2, ZeRO-2.
Per shape, in order (a section that fails prints one line and the others still run):

  decode   the reference decoder (256 steps) and the fast one on 200 random prompt tokens, as many rows as one
           rollout worker decodes per call in the loop: tokens/s and the ratio fast / reference. A random model
           is never confident, so the fast decoder reveals one token per forward: the ratio is its cache's.
  learner  3 coupled-GRPO steps of the real learner (actors.learner.LearnerImpl, DeepSpeed) in this process on
           random groups: tokens/s = completion tokens x mu / time_train, over steps 2-3 (step 1 warms up)
  memory   torch.cuda.max_memory_allocated() of each decoder's run and of the learner, less what was allocated
           before, against orchestrator/memory_plan.py's estimate (the `diffurl train --dry-run` numbers); the
           target is a ratio within 25% of 1
  sync     a sender and a receiver actor holding the model: the object store (cuda -> cpu -> object store ->
           cuda, the weights.sync=object_store path) and, with 2+ GPUs, the nccl broadcast of
           actors.weight_sync.BroadcastMember (weights.sync=broadcast; nccl cannot put two members on one GPU);
           seconds per sync, median of 3 after a warm-up, and a digest check that the receiver got the weights
  loop     `diffurl train` for 3 steps (orchestrator.run.train, in this process): one learner rank (1 GPU) and
           two rollout workers (0.5 GPU each) sharing the GPU, object-store sync: decode and learner tokens/s,
           sync and step seconds from metrics.jsonl (steps 2-3). With one GPU, Ray is told it has 2 and leaves
           CUDA_VISIBLE_DEVICES alone (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES), so every actor uses GPU 0.

--budget-s (default 420): a section of the first shape runs while any budget is left; one of a later shape runs
only if what is left covers its time at the first shape x the ratio of parameters. Every line is printed as it
is measured, and all of them again as one table at the end. --cpu-dry-run: the same sections at toy shapes
(hidden 64 and 128, 2 layers, vocab 512), fp32 on CPU, 48 prompt tokens, a 32-position canvas in blocks of 16.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray
import torch
from transformers import Qwen2Config

from actors.dllm import DiffusionQwen2ForCausalLM, build_model, decode, save_model, train_tokenizer
from actors.dllm.tokenizer import SPECIAL_TOKENS
from actors.rollout import decoder_settings
from actors.trajectory import CompletionReward, DecodeStats, Trajectory
from actors.weight_sync import BroadcastMember, free_port_here, layout_of, state_digest
from orchestrator.config import load_config
from orchestrator.data import load_prompts
from orchestrator.errors import one_line
from orchestrator.memory_plan import ModelShape, gib, learner_memory, model_shape, rollout_memory, rollout_rows
from orchestrator.metrics import read_metrics
from orchestrator.plan import ACTOR_ENV
from orchestrator.run import tokenizer_corpus, train

REPO_ROOT = Path(__file__).resolve().parent.parent
QWEN = dict(vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1e6)
SHAPES = {  # Qwen2.5-0.5B and -1.5B (config.json)
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, **QWEN),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, **QWEN),
}
TOY = dict(vocab_size=512, tie_word_embeddings=True, max_position_embeddings=512, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2)
TOY_SHAPES = {"toy": dict(hidden_size=64, intermediate_size=128, **TOY),
              "toy-2x": dict(hidden_size=128, intermediate_size=256, **TOY)}
STEPS = 3  # learner and loop steps; the first one warms up
REPEATS = 3  # timed syncs per method (median)
ROWS: list[tuple[str, str, str, str]] = []  # (shape, section, what, value): the final table


def report(shape: str, section: str, what: str, value: str, detail: str = "") -> None:
    ROWS.append((shape, section, what, value))
    print(f"[{shape}] {section:<7} {what}: {value}" + (f"  ({detail})" if detail else ""), flush=True)


@dataclass
class Check:
    """One shape's model directory, the run config every section uses and the peaks the sections measured."""
    name: str
    cfg: object
    model_dir: Path
    device: torch.device
    vocab: int  # the tokenizer's: the ids random prompts and completions are drawn from
    peaks: dict[str, int] = field(default_factory=dict)  # role -> bytes


def run_config(model_dir: Path, root: Path, cuda: bool, toy: bool):
    lengths = (dict(prompt=48, canvas=32, block=16) if toy else dict(prompt=200, canvas=256, block=32))
    device = (["run.device=cuda", "learner.gpus_per_rank=1", "rollout.gpus_per_worker=0.5", "model.dtype=bfloat16"]
              if cuda else ["run.device=cpu"])
    return load_config(REPO_ROOT / "configs" / "demo.yaml", [
        f"model.path={model_dir}", f"run.root_dir={root}", "run.name=gpu_check", f"run.steps={STEPS}",
        f"run.checkpoint_every={STEPS}", "run.keep_checkpoints=1", f"data.max_prompt_tokens={lengths['prompt']}",
        f"rollout.max_new_tokens={lengths['canvas']}", f"rollout.steps={lengths['canvas']}",
        f"rollout.block_length={lengths['block']}", "rollout.decoder=fast", "rollout.threshold=0.9",
        "rollout.cache=prefix", "rollout.num_workers=2", "rollout.group_size=8", "rollout.prompts_per_step=2",
        "learner.micro_batch_size=4", "learner.mu=2", "weights.sync=object_store", "metrics.tensorboard=false",
        "metrics.progress_bar=false", *device])


# ----------------------------------------------------------------------------------------- the sections

def prepare(name: str, dims: dict, device: torch.device, root: Path, toy: bool) -> Check:
    """A random-init model of shape `dims` saved as an HF directory (bf16 on a GPU) with a BPE of the toy data."""
    model_dir = root / f"model-{name}"
    cfg = run_config(model_dir, root, device.type == "cuda", toy)
    tokenizer = train_tokenizer(tokenizer_corpus(load_prompts(cfg.data.train)[0]), min(2048, dims["vocab_size"]))
    config = Qwen2Config(**dims, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []), device:
        torch.manual_seed(0)
        model = DiffusionQwen2ForCausalLM(config)
    save_model(model.to(torch.bfloat16 if device.type == "cuda" else torch.float32), tokenizer, model_dir)
    shape = ModelShape.from_config(dims)
    n = shape.parameters
    report(name, "prepare", "model", f"{n / 1e9:.2f}B parameters" if n >= 1e8 else f"{n / 1e6:.2f}M parameters",
           f"hidden {shape.hidden_size}, {shape.num_hidden_layers} layers, {shape.num_attention_heads} heads / "
           f"{shape.num_key_value_heads} KV, vocab {shape.vocab_size}, BPE {len(tokenizer)}, {model_dir}")
    return Check(name, cfg, model_dir, device, len(tokenizer))


def section_decode(check: Check) -> None:
    """Reference vs fast decoder at the loop's shape: one rollout worker's rows, as RolloutWorkerImpl loads it."""
    cfg, device, ro = check.cfg, check.device, check.cfg.rollout
    base = _allocated(device)
    model, tokenizer = build_model(check.model_dir, dtype=torch.bfloat16 if device.type == "cuda" else None)
    model.to(device).eval()
    rows = rollout_rows(cfg)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(len(SPECIAL_TOKENS), check.vocab, (cfg.data.max_prompt_tokens,),
                             generator=generator).tolist() for _ in range(rows)]
    fast = decoder_settings(ro)
    run = lambda s: decode(model, tokenizer, prompts, s, temperature=ro.temperature, seeds=list(range(rows)))
    speed = {}
    for settings in (replace(fast, decoder="reference", steps=ro.max_new_tokens), fast):
        run(replace(settings, max_new_tokens=8, steps=8, block_length=None))  # warm-up, untimed
        _reset_peak(device)
        t0 = time.perf_counter()
        out = run(settings)
        _synchronize(device)
        seconds = time.perf_counter() - t0
        if device.type == "cuda":
            check.peaks[f"rollout worker ({settings.decoder} decoder)"] = torch.cuda.max_memory_allocated() - base
        speed[settings.decoder] = rows * ro.max_new_tokens / seconds
        report(check.name, "decode", settings.decoder, f"{speed[settings.decoder]:,.0f} tokens/s",
               f"{rows} rows x {ro.max_new_tokens} positions after {cfg.data.max_prompt_tokens} prompt tokens, "
               f"{out.forwards} forwards, {seconds:.2f} s")
    report(check.name, "decode", "fast / reference", f"{speed['fast'] / speed['reference']:.2f}x",
           f"threshold {fast.threshold:g}, blocks of {fast.block_length}, cache {fast.cache}")


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


def section_learner(check: Check) -> None:
    """STEPS train steps of one learner rank in this process (world size 1), fed random groups."""
    from actors.learner import LearnerImpl

    cfg, device = check.cfg, check.device
    base = _allocated(device)
    _reset_peak(device)
    learner = LearnerImpl(cfg, rank=0, world_size=1, device=device.type)
    stream = RandomGroups(cfg, check.vocab)
    learner.setup("127.0.0.1", free_port_here(), str(check.model_dir), lambda: stream)
    stats = [learner.train_step(step) for step in range(STEPS)]
    if device.type == "cuda":
        check.peaks["learner rank"] = torch.cuda.max_memory_allocated() - base
    ro, le = cfg.rollout, cfg.learner
    tokens = ro.prompts_per_step * ro.group_size * ro.max_new_tokens * le.mu  # completion tokens per step
    timed = stats[1:]
    train_s = sum(s["time_train"] for s in timed) / len(timed)
    report(check.name, "learner", "coupled-GRPO", f"{tokens / train_s:,.0f} tokens/s",
           f"{tokens} completion tokens per step in {train_s:.2f} s train + "
           f"{sum(s['time_score'] for s in timed) / len(timed):.2f} s score; ZeRO-{le.zero_stage}, "
           f"micro-batches of {le.micro_batch_size}, {cfg.data.max_prompt_tokens + ro.max_new_tokens} tokens each")


def section_memory(check: Check) -> None:
    cfg, device = check.cfg, check.device.type
    shape, _ = model_shape(cfg)
    plans = {"learner rank": learner_memory(cfg, shape, device)}
    plans.update({f"rollout worker ({d} decoder)": rollout_memory(cfg, shape, device) for d in ("reference", "fast")})
    for role, plan in plans.items():
        measured = check.peaks.get(role)
        if device == "cpu":
            value = f"n/a on CPU; plan {gib(plan.total)} of host memory"
        elif measured is None:
            value = f"not measured (its section did not finish); plan {gib(plan.total)}"
        else:
            ratio = measured / plan.total
            value = (f"{gib(measured)} measured / {gib(plan.total)} planned = {ratio:.2f}x "
                     f"({'within' if abs(ratio - 1) <= 0.25 else 'OUTSIDE'} 25%)")
        report(check.name, "memory", role, value, f"plan: {plan.describe()}")


@ray.remote(num_cpus=0)
class SyncMember:
    """Learner rank 0's side (member 0) or a rollout worker's: the model on this actor's device, as the learner
    exports it (`export`) and a rollout worker loads it (`load`), or in a BroadcastMember group."""

    def __init__(self, model_dir: str, device: str):
        torch.set_num_threads(1)
        self.device = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
        self.model, _ = build_model(model_dir, dtype=torch.bfloat16 if device == "cuda" else None)
        self.model.to(self.device)
        self.group = None

    def address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), free_port_here()

    def layout(self):
        return layout_of(self.model.state_dict())

    def join(self, addr: str, port: int, member: int, size: int, layout, bucket_mb: float) -> None:
        self.group = BroadcastMember(addr, port, member, size, backend="nccl" if self.device.type == "cuda" else
                                     "gloo", device=self.device, layout=layout, bucket_bytes=int(bucket_mb * 2**20),
                                     timeout_s=300, name="gpu-check")

    @torch.no_grad()
    def bump(self) -> None:
        """New weights to send: every tensor plus one."""
        for t in self.model.state_dict().values():
            t.add_(1)

    def export(self) -> dict:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state)

    def send(self, version: int) -> None:
        self.group.send(self.model.state_dict(), version)

    def receive(self, version: int) -> None:
        self.group.receive(self.model, version)

    def digest(self) -> str:
        return state_digest(self.model.state_dict())


def section_sync(check: Check, gpus: int) -> None:
    cuda = check.device.type == "cuda"
    share = 0.0 if not cuda else 1.0 if gpus >= 2 else 0.5
    sender, receiver = members = [SyncMember.options(num_gpus=share).remote(str(check.model_dir), check.device.type)
                                  for _ in range(2)]
    try:
        def timed(sync) -> tuple[float, str]:
            ray.get(sender.bump.remote())
            sync(0)  # warm-up (nccl builds its communicator at the first collective)
            seconds = []
            for version in range(1, REPEATS + 1):
                t0 = time.perf_counter()
                sync(version)
                seconds.append(time.perf_counter() - t0)
            digests = ray.get([m.digest.remote() for m in members])
            return sorted(seconds)[REPEATS // 2], "receiver matches" if len(set(digests)) == 1 else "RECEIVER DIFFERS"

        where = "cuda -> cpu -> cuda" if cuda else "cpu"
        seconds, ok = timed(lambda v: ray.get(receiver.load.remote(sender.export.remote())))
        report(check.name, "sync", f"object store ({where})", f"{seconds:.2f} s", f"1 receiver, {ok}")
        if cuda and gpus < 2:
            report(check.name, "sync", "nccl", f"needs 2 GPUs, this machine has {gpus}")
            return
        addr, port = ray.get(sender.address.remote())
        layout = ray.get(sender.layout.remote())
        bucket_mb = check.cfg.weights.bucket_mb
        ray.get([m.join.remote(addr, port, i, 2, layout, bucket_mb) for i, m in enumerate(members)])
        backend = "nccl" if cuda else "gloo (CPU: what nccl runs on a GPU)"
        seconds, ok = timed(lambda v: ray.get([sender.send.remote(v), receiver.receive.remote(v)]))
        report(check.name, "sync", f"broadcast, {backend}", f"{seconds:.2f} s",
               f"1 receiver, buckets of {bucket_mb:g} MiB, {ok}")
    finally:
        for m in members:
            ray.kill(m)


def section_loop(check: Check) -> None:
    """`diffurl train` for STEPS steps in this process, on the Ray main() started (train() uses a running one)."""
    cfg = check.cfg
    run_dir = train(cfg, out=lambda *_: None)
    try:
        rows = read_metrics(run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # the checkpoint: GBs at these shapes
    timed = rows[1:]
    mean = lambda key: sum(r[key] for r in timed) / len(timed)
    ro, le = cfg.rollout, cfg.learner
    where = (f"1 learner rank (1 GPU) + {ro.num_workers} rollout workers ({ro.gpus_per_worker:g} GPU each)"
             if check.device.type == "cuda" else f"1 learner rank + {ro.num_workers} rollout workers on CPU")
    report(check.name, "loop", "decode", f"{mean('tokens_per_s'):,.0f} tokens/s per worker",
           f"{where}, {STEPS} steps, steps 2-{STEPS}")
    learner_tokens = mean("completion_len") * ro.prompts_per_step * ro.group_size * le.mu
    report(check.name, "loop", "learner", f"{learner_tokens / mean('time_train'):,.0f} tokens/s",
           f"{mean('time_train'):.2f} s train, {mean('time_score'):.2f} s score per step")
    report(check.name, "loop", "sync (object store)", f"{mean('time_sync'):.2f} s", f"to {ro.num_workers} workers")
    report(check.name, "loop", "step", f"{mean('step_wall_s') - mean('time_checkpoint'):.2f} s",
           f"without checkpoints; rollout {mean('time_rollout_wall'):.2f} s; final checkpoint "
           f"{rows[-1]['time_checkpoint']:.2f} s")


# ----------------------------------------------------------------------------------------- helpers

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
    """Ray for the sync and loop sections (and the learner's `info()`, which would start a default one). One GPU:
    Ray counts 2 and leaves CUDA_VISIBLE_DEVICES alone, so the learner's whole GPU and the rollout workers'
    halves are all GPU 0 (a config cannot share a learner's GPU)."""
    logical = gpus
    if cuda and gpus == 1:
        os.environ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"  # the raylet and every worker inherit it
        logical = 2
        print("one GPU: Ray is told 2 (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1): every actor uses GPU 0",
              flush=True)
    ray.init(num_cpus=max(2, os.cpu_count() or 2) if cuda else 2, num_gpus=logical, include_dashboard=False,
             log_to_driver=False, namespace="diffurl-gpu-check", runtime_env={"env_vars": ACTOR_ENV})


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| shape | section | what | value |", "| --- | --- | --- | --- |"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="toy shapes, fp32 on CPU: every code path")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of all sections")
    parser.add_argument("--shapes", default=None, help="comma-separated, in order (default: 0.5B,1.5B; "
                                                        "toy,toy-2x with --cpu-dry-run)")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget_s
    shapes = TOY_SHAPES if args.cpu_dry_run else SHAPES
    names = args.shapes.split(",") if args.shapes else list(shapes)
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise SystemExit(f"--shapes: {unknown} unknown; choose from {', '.join(shapes)}")
    cuda = not args.cpu_dry_run
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"gpu_check: torch {torch.__version__} ({sys.executable}) sees no GPU; on a GPU machine "
                         f"use a python whose torch has CUDA (PYTHON=... bash benchmarks/gpu_check.sh), or run "
                         f"--cpu-dry-run here")
    gpus = torch.cuda.device_count() if cuda else 0
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(1)  # a toy model: keep the machine free for the actors
    print(f"gpu_check: {f'{gpus} x {torch.cuda.get_device_name(0)}' if cuda else 'CPU dry run'}, torch "
          f"{torch.__version__}, shapes {', '.join(names)}, budget {args.budget_s:.0f} s", flush=True)
    _start_ray(cuda, gpus)
    root = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    took: dict[str, dict[str, float]] = {}  # shape -> section -> seconds
    params = {n: ModelShape.from_config(shapes[n]).parameters for n in names}
    sections = {"decode": section_decode, "learner": section_learner, "memory": section_memory,
                "sync": lambda c: section_sync(c, gpus), "loop": section_loop}
    try:
        for i, name in enumerate(names):
            scale, first = params[name] / params[names[0]], took.get(names[0], {})
            check, took[name] = None, {}
            for section in ("prepare", *sections):
                left, need = deadline - time.monotonic(), first.get(section, 0.0) * scale if i else 0.0
                if check is None and section != "prepare":
                    report(name, section, "skipped", "no model")
                    continue
                if left <= need:
                    report(name, section, "skipped",
                           f"{left:.0f} s of the budget left" + (f", needs ~{need:.0f} s" if need else ""))
                    continue
                t0 = time.monotonic()
                try:
                    if section == "prepare":
                        check = prepare(name, shapes[name], device, root, toy=args.cpu_dry_run)
                    else:
                        sections[section](check)
                except Exception as e:  # noqa: BLE001 - one section's failure is one line; the others still run
                    report(name, section, "FAILED", one_line(e))
                finally:
                    _free(device)
                took[name][section] = time.monotonic() - t0
            shutil.rmtree(root / f"model-{name}", ignore_errors=True)
            if took[name]:
                print(f"[{name}] seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in took[name].items()), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{_table(ROWS)}\n\ngpu_check: {args.budget_s - (deadline - time.monotonic()):.0f} s", flush=True)


if __name__ == "__main__":
    main()
