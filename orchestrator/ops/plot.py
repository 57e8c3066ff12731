"""`diffurl plot RUN [--out PNG]`: training curves from `RUN/metrics.jsonl`, one panel per quantity, in a grid.

Panels: reward (mean, with a +-std band), pass rate, KL, AR-ness (local and global), phase times (every `time_*`
metric that is one phase) and walls (the rollout and train walls, which contain phases, and the step's wall),
each panel's legend below it, off the curves. A change of the rollout or sandbox worker count (`diffurl scale`)
is a dashed vertical line at that step in every panel, named in the title of the first. Drawn with matplotlib's
Agg canvas directly: no pyplot, no global backend switch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.metrics import read_metrics
from orchestrator.ops.status import run_dir_arg
from orchestrator.rundir import RunDir

WALLS = ("time_rollout_wall", "time_train_wall", "step_wall_s")  # each contains phases: drawn apart from them
PANELS = (  # (title, metrics drawn as lines, y label)
    ("reward", ("reward_mean",), "reward"),
    ("pass rate", ("pass_rate",), "fraction of tests passed"),
    ("KL to reference", ("kl",), "KL"),
    ("AR-ness", ("local_arness", "global_arness"), "AR-ness"),
    ("phase times", None, "seconds"),  # None: every time_* metric that is not a wall
    ("walls", WALLS, "seconds"),
)
COLUMNS = 3
WORKERS = ("rollout_workers", "sandbox_workers")


@dataclass
class Plot:
    path: Path
    panels: dict[str, list[str]]  # panel title -> the curves drawn in it, read back from the figure's axes
    steps: int  # metrics rows drawn
    worker_changes: list[tuple[int, str]]  # (step, "rollout 2 -> 3") for each change of a worker count


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Plot:
    """Write the curves of `run_dir`'s metrics to `out` (default RUN/curves.png)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = run_dir_arg(run_dir)
    rows = read_metrics(run_dir) if RunDir(run_dir).metrics.is_file() else []
    if not rows:
        raise UserError(f"run directory {run_dir}: no metrics in metrics.jsonl yet; nothing to plot")
    out = Path(out) if out is not None else RunDir(run_dir).curves
    steps = [row["step"] for row in rows]
    phases = sorted({k for row in rows for k in row if k.startswith("time_") and k not in WALLS})
    changes = worker_changes(rows)

    grid_rows = math.ceil(len(PANELS) / COLUMNS)
    fig = Figure(figsize=(5.0 * COLUMNS, 4.2 * grid_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(grid_rows, COLUMNS, squeeze=False).ravel()
    for ax, (title, names, ylabel) in zip(axes, PANELS):
        prefix = "time_" if names is None or names is WALLS else ""  # time curves are labelled by phase name
        drawn = [name for name in (phases if names is None else names) if _draw(ax, steps, rows, name, prefix)]
        if title == "reward" and drawn:
            _std_band(ax, steps, rows)
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        elif len(drawn) > 1 or title == "reward":
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
        for step, _ in changes:
            ax.axvline(step, color="gray", linestyle="--", linewidth=1, label="_workers")  # "_": not in legends
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
    for ax in axes[len(PANELS):]:
        ax.set_axis_off()
    if changes:
        axes[0].set_title("reward\n(dashed: " + "; ".join(f"step {s}: {what}" for s, what in changes[:4])
                          + (" ..." if len(changes) > 4 else "") + ")", fontsize="small")
    fig.suptitle(run_dir.name)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write the PNG ({e.strerror})") from None
    panels = {title: [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
              for ax, (title, *_) in zip(axes, PANELS)}
    return Plot(out, panels, len(rows), changes)


def worker_changes(rows: list[dict]) -> list[tuple[int, str]]:
    """(step, "rollout 2 -> 3, sandbox 1 -> 2") where a row's worker counts differ from the row before."""
    changes = []
    for before, row in zip(rows, rows[1:]):
        moved = [f"{name.removesuffix('_workers')} {before[name]:g} -> {row[name]:g}" for name in WORKERS
                 if isinstance(before.get(name), (int, float)) and isinstance(row.get(name), (int, float))
                 and before[name] != row[name]]
        if moved:
            changes.append((row["step"], ", ".join(moved)))
    return changes


def _values(rows: list[dict], name: str) -> list[float]:
    """The metric per row, NaN where it is missing or was logged as null (non-finite)."""
    return [float(row[name]) if isinstance(row.get(name), (int, float)) else math.nan for row in rows]


def _draw(ax, steps: list[int], rows: list[dict], name: str, prefix: str) -> bool:
    values = _values(rows, name)
    if all(math.isnan(v) for v in values):
        return False
    ax.plot(steps, values, marker="o", markersize=3, label=name.removeprefix(prefix))
    return True


def _std_band(ax, steps: list[int], rows: list[dict]) -> None:
    mean, std = _values(rows, "reward_mean"), _values(rows, "reward_std")
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                    alpha=0.2, label="+-std")


def plot_command(run_dir: str, out: str | None) -> int:
    """`diffurl plot RUN [--out PNG]`."""
    plot = plot_run(run_dir, out)
    print(f"wrote {plot.path}: {len(plot.panels)} panels ({', '.join(plot.panels)}) over {plot.steps} steps")
    return 0
