"""The `diffurl` command.

    diffurl train CONFIG [key=value ...] [--dry-run]
    diffurl demo [--config configs/ablation_d1.yaml] [key=value ...]
    diffurl eval CHECKPOINT --problems FILE.jsonl|humaneval [--temperatures 0,0.4] [--samples N]
    diffurl sandbox score --problems P.jsonl --samples S.jsonl [--out R.jsonl] [--workers N]
    diffurl sandbox check
    diffurl submit CONFIG [key=value ...] --address http://HEAD:8265 [--wait]
    diffurl status RUN_DIR | diffurl plot RUN_DIR | diffurl scale RUN_DIR --rollout-workers N

User mistakes print one line, `diffurl: error: ...`, and exit with code 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from orchestrator.errors import RunFailed, UserError

def _cmd_train(args) -> int:
    from orchestrator.config import check_paths, load_config
    from orchestrator.driver import resume, train

    if args.resume:
        overrides = ([args.config] if args.config else []) + args.overrides  # `--resume RUN k=v`: no CONFIG
        resume(args.resume, overrides)
        return 0
    if not args.config:
        raise UserError("train: give a CONFIG (e.g. configs/demo.yaml) or --resume RUN_DIR")
    cfg = load_config(args.config, args.overrides)
    check_paths(cfg)
    train(cfg, dry_run=args.dry_run)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from orchestrator.demo import add_demo_command
    from orchestrator.evaluate import add_eval_command
    from orchestrator.submit import add_ops_commands
    from sandbox_workers.cli import add_sandbox_commands

    parser = argparse.ArgumentParser(prog="diffurl", description="coupled-GRPO for diffusion LMs on Ray")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run coupled-GRPO training from a YAML config")
    p.add_argument("config", nargs="?", help="YAML preset, e.g. configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run.steps=10")
    p.add_argument("--dry-run", action="store_true", help="print the actor plan and exit")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.set_defaults(func=_cmd_train)

    add_demo_command(sub)
    add_eval_command(sub)
    add_sandbox_commands(sub)
    add_ops_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from orchestrator.run_setup import ACTOR_ENV

    for key, value in ACTOR_ENV.items():  # the driver process too: quiet model loading, no thread pools
        os.environ.setdefault(key, value)
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
    except KeyboardInterrupt:
        print("diffurl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
