"""The monitor's outputs: `report.json`, SageMaker-style `statistics.json` and
`constraint_violations.json`, a self-contained `report.html`, and a Rich summary."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from workloads.monitoring.baseline import reference_arrays
from workloads.monitoring.monitor import EXIT_FOUND, EXIT_OK, Window
from workloads.monitoring.stats import bin_edges
from workloads.storage import StorageError, atomic_path, no_space_named

FILES = ("report.json", "statistics.json", "constraint_violations.json", "report.html")
MAX_PLOTTED = 50  # features in the HTML's drift chart (drifted first)
MAX_OVERLAYS = 20  # drifted features whose distributions the HTML draws
PLOT_LIMIT = 1e300  # values past it are drawn at it


def exit_status(report: dict[str, Any]) -> int:
    if not report.get("rows"):
        return EXIT_OK
    found = report["dataset_drift"] or report["prediction_drift"]["drifted"] or report["violations"]
    return EXIT_FOUND if found else EXIT_OK


def statistics_doc(baseline: dict[str, Any], window: Window) -> dict[str, Any]:
    """The current window's statistics in SageMaker Model Monitor's `statistics.json` shape."""
    features = []
    for name, column in window.columns.items():
        if column.kind == "numeric":
            values = column.present()
            present = len(values)
        else:
            keys, counts = column.categories()  # counted from codes: no string per row
            present = int(counts.sum())
        common = {"num_present": present, "num_missing": int(len(column) - present)}
        if column.kind == "numeric":
            stats: dict[str, Any] = {"common": common}
            if len(values):
                with np.errstate(over="ignore", invalid="ignore"):  # values near 1.8e308
                    stats |= {
                        "mean": float(values.mean()),
                        "sum": float(values.sum()),
                        "std_dev": float(values.std()),
                        "min": float(values.min()),
                        "max": float(values.max()),
                    }
            features.append(
                {"name": name, "inferred_type": "Fractional", "numerical_statistics": stats}
            )
        else:
            buckets = [
                {"value": str(k), "count": int(c)} for k, c in zip(keys, counts, strict=True)
            ]
            features.append(
                {
                    "name": name,
                    "inferred_type": "String",
                    "string_statistics": {
                        "common": common,
                        "distinct_count": float(len(keys)),
                        "distribution": {"categorical": {"buckets": buckets[:1000]}},
                    },
                }
            )
    return {"version": 0.0, "dataset": {"item_count": window.rows}, "features": features}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _overlay(name: str, entry: dict[str, Any], column: Window | Any) -> str:
    import matplotlib.pyplot as plt

    ref, weights, _ = reference_arrays(entry)
    fig, ax = plt.subplots(figsize=(5, 2.6))
    if entry["type"] == "numeric":
        # matplotlib cannot lay out an axis spanning past the float range: clip for drawing
        ref, cur = np.clip(ref, -PLOT_LIMIT, PLOT_LIMIT), column.present()
        cur = np.clip(cur, -PLOT_LIMIT, PLOT_LIMIT)
        both = np.concatenate([ref, cur]) if len(cur) else ref
        edges = bin_edges(float(both.min()), float(both.max()))
        with np.errstate(over="ignore", invalid="ignore"):  # bins ~1e307 wide: shares ~0
            ax.hist(ref, bins=edges, weights=weights, density=True, alpha=0.5, label="baseline")
            ax.hist(cur, bins=edges, density=True, alpha=0.5, label="current")
    else:
        cur_keys, cur_counts = column.categories()
        keys = list(dict.fromkeys([*ref.tolist(), *cur_keys.tolist()]))[:30]
        ref_share = dict(zip(ref.tolist(), (weights / weights.sum()).tolist(), strict=True))
        cur_share = dict(
            zip(cur_keys.tolist(), (cur_counts / max(cur_counts.sum(), 1)).tolist(), strict=True)
        )
        x = np.arange(len(keys))
        ax.bar(x - 0.2, [ref_share.get(k, 0) for k in keys], 0.4, label="baseline")
        ax.bar(x + 0.2, [cur_share.get(k, 0) for k in keys], 0.4, label="current")
        ax.set_xticks(x, keys, rotation=45, fontsize=7)
    ax.set_title(name)
    ax.legend(fontsize=7)
    return _png(fig)


def _plotted(report: dict[str, Any]) -> list[str]:
    """The features the HTML plots: the drifted ones first, at most `MAX_PLOTTED` (the
    tables and report.json list them all)."""
    names = sorted(report["features"], key=lambda n: not report["features"][n]["drifted"])
    return names[:MAX_PLOTTED]


def _scores(report: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    names = _plotted(report)
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(names) + 1))
    colors = ["tab:red" if report["features"][n]["drifted"] else "tab:green" for n in names]
    ax.barh(names, [report["features"][n]["statistic"] or 0 for n in names], color=colors)
    more = len(report["features"]) - len(names)
    ax.set_title("drift statistic per feature (red: drifted)" + (f"; {more} more" if more else ""))
    return _png(fig)


def _quality(report: dict[str, Any]) -> str | None:
    hours = report.get("model_quality", {}).get("by_hour", {})
    if not hours:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    keys = [k for k in next(iter(hours.values())) if k != "rows"]
    for key in keys:
        ax.plot(list(hours), [h.get(key) for h in hours.values()], marker="o", label=key)
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    ax.set_title("model quality per hour")
    ax.legend(fontsize=7)
    return _png(fig)


def render_html(report: dict[str, Any], baseline: dict[str, Any], window: Window) -> str:
    import matplotlib

    matplotlib.use("Agg")
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{f['method']}</td><td>{f['statistic']}</td>"
        f"<td>{f['threshold']}</td><td>{'yes' if f['drifted'] else 'no'}</td></tr>"
        for n, f in report["features"].items()
    )
    images = [_scores(report)]
    for name in _plotted(report)[:MAX_OVERLAYS]:
        if report["features"][name]["drifted"]:
            images.append(_overlay(name, baseline["features"][name], window.columns[name]))
    if report["prediction_drift"]["drifted"]:
        images.append(_overlay("prediction", baseline["prediction"], window.prediction))
    quality = _quality(report)
    if quality:
        images.append(quality)
    imgs = "".join(f'<img src="data:image/png;base64,{b}">' for b in images)
    violations = "".join(
        f"<li>{html.escape(v['feature_name'] or '(all)')}: "
        f"{html.escape(v['constraint_check_type'])}"
        f" &mdash; {html.escape(v['description'])}</li>"
        for v in report["violations"]
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mlinfra monitor</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px "
        "solid #ddd}img{margin:4px}</style></head><body>"
        f"<h1>Monitoring report</h1><p>{report['rows']} rows, window {report['window']}; "
        f"dataset drift: <b>{'yes' if report['dataset_drift'] else 'no'}</b> "
        f"({report['drift_share']:.0%} of features drifted)</p>"
        "<table><tr><th>feature</th><th>method</th><th>statistic</th><th>threshold</th>"
        f"<th>drifted</th></tr>{rows}</table><h2>Violations</h2><ul>{violations or '<li>none</li>'}"
        f"</ul><h2>Plots</h2>{imgs}<h2>Report</h2><pre>"
        f"{html.escape(_json(report))}</pre></body></html>"
    )


def _json(doc: Any) -> str:
    """Strict JSON: a statistic that is not a finite number (an AUC of one class, a sum
    past 1.8e308) is written as null, never as NaN or Infinity."""
    return json.dumps(_finite(doc), indent=2, default=str, allow_nan=False)


def _finite(doc: Any) -> Any:
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: _finite(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_finite(v) for v in doc]
    return doc


def write_reports(
    output: str | Path, report: dict[str, Any], baseline: dict[str, Any] | None, window: Window
) -> list[Path]:
    """Write the report files into `output`; an empty window gets `report.json` alone.
    All of them or none: every file is rendered, then written and synced under a temporary
    name, and only then renamed into place (`report.json` last); files of an earlier run
    in the same folder that this one does not write are removed."""
    out = Path(output)
    docs = {"report.json": _json(report)}
    if report.get("rows") and baseline is not None:
        docs["statistics.json"] = _json(statistics_doc(baseline, window))
        docs["constraint_violations.json"] = _json({"violations": report["violations"]})
        docs["report.html"] = render_html(report, baseline, window)
    try:
        with no_space_named(out):
            out.mkdir(parents=True, exist_ok=True)
        with ExitStack() as renames:  # leaves in reverse: report.json is renamed last
            for name, text in docs.items():
                tmp = renames.enter_context(atomic_path(out / name))
                tmp.write_text(text)
        for stale in set(FILES) - set(docs):
            (out / stale).unlink(missing_ok=True)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot write the reports to {out}: {exc.strerror or exc}") from None
    return [out / name for name in FILES if name in docs]


def summary_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(
        title=f"monitor: {report['rows']} rows, dataset drift "
        f"{'YES' if report['dataset_drift'] else 'no'}"
    )
    for col in ("feature", "method", "statistic", "threshold", "drifted"):
        table.add_column(col)
    entries = [*report["features"].items(), ("(prediction)", report["prediction_drift"])]
    for name, doc in entries:
        stat = doc["statistic"]
        table.add_row(
            name,
            doc["method"],
            "n/a" if stat is None else f"{stat:.4g}",
            str(doc["threshold"]),
            "[red]yes[/red]" if doc["drifted"] else "no",
        )
    return table
