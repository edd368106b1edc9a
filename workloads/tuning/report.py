"""What people look at: the live table of trials, the final summary, and a saved HTML
report (optimisation history, parameter importances, parallel coordinates)."""

from __future__ import annotations

import base64
import html
import io
import warnings
from pathlib import Path
from typing import Any

import optuna
from rich.table import Table

from workloads.storage import atomic_write
from workloads.tuning.study import TrialView, TuneResult

STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_table(views: list[TrialView], metric: str, title: str = "") -> Table:
    """One row per trial: number, state, params, the objective, epochs run, note."""
    table = Table(title=title or None)
    for col in ("#", "state", "params", metric, "epochs", "note"):
        table.add_column(
            col, overflow="fold", justify="right" if col in ("#", "epochs") else "left"
        )
    for v in sorted(views, key=lambda v: v.number):
        style = STYLE.get(v.state, "")
        table.add_row(
            str(v.number),
            f"[{style}]{v.state.lower()}[/]" if style else v.state.lower(),
            " ".join(f"{k}={_fmt(p)}" for k, p in v.params.items()),
            "" if v.value is None else f"{v.value:.4f}",
            str(v.epochs),
            v.note[:80],
        )
    return table


def summary_lines(result: TuneResult, metric: str) -> list[str]:
    done = ", ".join(
        f"{result.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
    )
    lines = [
        f"study {result.study}: {len(result.trials)} trial{'s' * (len(result.trials) != 1)} "
        f"({done}), {result.epochs} epochs, "
        f"{result.wall_seconds:.0f} s",
        f"journal: {result.journal}",
    ]
    if result.best is not None:
        params = " ".join(f"{k}={_fmt(p)}" for k, p in result.best.params.items())
        lines.append(
            f"best: trial {result.best.number}, {metric}={result.best.value:.4f} ({params})"
        )
    lines += result.notes
    return lines


def save_report(study: optuna.Study, result: TuneResult, metric: str, path: Path) -> Path:
    """A self-contained HTML report: the summary, every trial, and Optuna's optimisation
    history, parameter importances and parallel-coordinates views (matplotlib, inlined)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from optuna.visualization import matplotlib as views

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    plots: list[tuple[str, Any]] = []
    if complete:
        plots.append(("optimisation history", views.plot_optimization_history))
    if len(complete) >= 2 and len({k for t in complete for k in t.params}) >= 2:
        plots.append(("parameter importances", views.plot_param_importances))
    if len(complete) >= 2:
        plots.append(("parallel coordinates", views.plot_parallel_coordinate))
    images = []
    for title, plot in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib views experimental
            ax = plot(study)
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(9, 4.5)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        data = base64.b64encode(buffer.getvalue()).decode()
        images.append(f"<h2>{title}</h2><img alt='{title}' src='data:image/png;base64,{data}'>")
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(c))}</td>"
            for c in (
                v.number,
                v.state.lower(),
                " ".join(f"{k}={_fmt(p)}" for k, p in v.params.items()),
                "" if v.value is None else f"{v.value:.4f}",
                v.epochs,
                v.note,
            )
        )
        + "</tr>"
        for v in sorted(result.trials, key=lambda v: v.number)
    )
    summary = "".join(f"<p>{html.escape(line)}</p>" for line in summary_lines(result, metric))
    head = "".join(f"<th>{c}</th>" for c in ("#", "state", "params", metric, "epochs", "note"))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>study {html.escape(result.study)}"
        "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style></head><body>"
        f"<h1>study {html.escape(result.study)}</h1>{summary}"
        f"<table><tr>{head}</tr>{rows}</table>{''.join(images)}</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, page)
    return path
