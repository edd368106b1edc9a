"""Monitor benchmark: our drift statistics against Evidently's DataDriftPreset, and reading
captured traffic.

    .venv/bin/python benchmarks/monitor.py                         # 100k and 1M rows, 10M records
    .venv/bin/python benchmarks/monitor.py --rows 1e5 --capture-records 1e6

Data: reference and current tables of `--rows` rows x 20 columns (15 numeric, 5
categorical; seeded numpy), 5 numeric and 2 categorical columns shifted in the current one,
written once as parquet under benchmarks/out/monitor/. Each engine runs in its own child
process from those files (the parent reads its peak RSS from `os.wait4`):

- ours: `workloads.monitoring.stats.column_drift` per column (Evidently's default tests:
  above 1000 reference rows, normed Wasserstein for numbers, Jensen-Shannon for strings);
- evidently: Evidently 0.7 `Report([DataDriftPreset()])` in its own venv
  `benchmarks/.venv-evidently` (pandas<3.1: Evidently breaks on 3.1), created when missing.

Both print each column's drift score; the parent checks they agree to 1e-6. Capture: a
SageMaker data-capture JSONL window of `--capture-records` records (one row of the 20
columns each) read by the monitor (`workloads.monitoring.monitor.read_window`) against a
baseline: seconds and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "monitor"
EVIDENTLY_VENV = ROOT / "benchmarks" / ".venv-evidently"
EVIDENTLY_PY = EVIDENTLY_VENV / "bin" / "python"
JSON = "application/json"
NUMERIC = [f"n{i}" for i in range(15)]
CATEGORICAL = [f"c{i}" for i in range(5)]
SHIFTED = ["n0", "n1", "n2", "n3", "n4", "c0", "c1"]


def generate(rows: int, seed: int = 11) -> Path:
    import pandas as pd

    folder = OUT / f"rows-{rows}"
    if (folder / "current.parquet").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def table(shift: bool) -> pd.DataFrame:
        cols = {}
        for i, name in enumerate(NUMERIC):
            move = 0.5 if shift and name in SHIFTED else 0.0
            cols[name] = rng.normal(i + move, 1 + i / 10, rows)
        for i, name in enumerate(CATEGORICAL):
            k = 3 + i * 4
            p = np.arange(1, k + 1, dtype=float)
            p = p[::-1] if shift and name in SHIFTED else p
            cols[name] = rng.choice([f"v{j}" for j in range(k)], rows, p=p / p.sum())
        return pd.DataFrame(cols)

    table(False).to_parquet(folder / "reference.parquet")
    table(True).to_parquet(folder / "current.parquet")
    return folder


def child_ours(folder: Path) -> dict:
    """Column by column (a column pair in memory at a time); the clocks skip the reads."""
    import pyarrow.parquet as pq

    from workloads.monitoring import stats

    files = [pq.ParquetFile(folder / f"{n}.parquet") for n in ("reference", "current")]
    wall = cpu = 0.0
    scores = {}
    for name in NUMERIC + CATEGORICAL:
        kind = "numeric" if name in NUMERIC else "categorical"
        r, c = (f.read(columns=[name]).column(name) for f in files)
        started, cpu_started = time.perf_counter(), time.process_time()
        if kind == "numeric":  # float64 views (no missing values here)
            r, c = r.to_numpy(), c.to_numpy()
        scores[name] = stats.column_drift(r, c, kind).statistic
        wall += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
    return {"compute_s": wall, "compute_cpu_s": cpu, "scores": scores}


def child_evidently(folder: Path) -> dict:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    ref, cur = (
        pd.read_parquet(folder / "reference.parquet"),
        pd.read_parquet(folder / "current.parquet"),
    )
    started, cpu = time.perf_counter(), time.process_time()
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    scores = {}
    for metric in snapshot.dict()["metrics"]:
        ident = str(metric.get("metric_name") or metric.get("metric_id") or "")
        for name in NUMERIC + CATEGORICAL:
            if f"column={name})" in ident or f"column={name}," in ident:
                value = metric.get("value")
                scores[name] = float(value["value"] if isinstance(value, dict) else value)
    return {"compute_s": elapsed, "compute_cpu_s": cpu, "scores": scores}


def write_capture(folder: Path, records: int, seed: int = 5) -> Path:
    """A capture window: `records` JSON requests of one row each, in hourly files."""
    from datetime import UTC, datetime

    import orjson

    from workloads.serving.capture import Captured, capture_record

    target = folder / f"capture-{records}"
    if (target / "done").exists():
        return target
    rng = np.random.default_rng(seed)
    per_file = 100_000
    for f, start in enumerate(range(0, records, per_file)):
        n = min(per_file, records - start)
        when = datetime(2026, 11, 30, f % 24, tzinfo=UTC)
        path = target / "bench" / "AllTraffic" / f"{when:%Y/%m/%d/%H}" / f"{f:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        nums = rng.normal(0, 1, (n, len(NUMERIC))).round(4)
        cats = rng.integers(0, 3, (n, len(CATEGORICAL)))
        with path.open("wb") as fh:
            for i in range(n):
                row = {c: float(nums[i, j]) for j, c in enumerate(NUMERIC)}
                row |= {c: f"v{cats[i, j]}" for j, c in enumerate(CATEGORICAL)}
                body = orjson.dumps({"instances": [row]})
                out = orjson.dumps({"predictions": [{"label": int(cats[i, 0] > 0)}]})
                item = Captured(JSON, body, out, JSON, None, when)
                rec = capture_record(item, f"e{start + i}")
                fh.write(orjson.dumps(rec) + b"\n")
    (target / "done").write_text("")
    return target


def child_capture(folder: Path) -> dict:
    import pandas as pd

    from workloads.monitoring.baseline import table_baseline
    from workloads.monitoring.monitor import Options, analyse, read_window

    ref = (
        pd.read_parquet(OUT / "rows-100000" / "reference.parquet")
        if (OUT / "rows-100000").exists()
        else None
    )
    if ref is None:
        ref = pd.DataFrame(
            {c: np.zeros(10) for c in NUMERIC} | {c: ["v0"] * 10 for c in CATEGORICAL}
        )
    baseline = table_baseline("tabular", ref, [{"label": 1}] * len(ref))
    started = time.perf_counter()
    window = read_window(baseline, str(folder), Options())
    read_s = time.perf_counter() - started
    report = analyse(baseline, window, Options())
    return {"read_s": read_s, "total_s": time.perf_counter() - started, "rows": report["rows"]}


def run_child(python: str, mode: str, folder: Path, timeout: float = 3600) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([python, __file__, "--child", mode, "--data", str(folder)],
                                stdout=out, stderr=err, env=env, cwd=ROOT)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
        errors = err.read()
    result = {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}
    if os.waitstatus_to_exitcode(status) != 0 or not lines:
        result["error"] = (errors.strip().splitlines() or ["no output"])[-1][:300]
    else:
        result |= json.loads(lines[-1])
    return result


def ensure_evidently() -> bool:
    if EVIDENTLY_PY.exists():
        return True
    base = "python3.11"
    subprocess.run([base, "-m", "venv", str(EVIDENTLY_VENV)], check=True)
    done = subprocess.run([str(EVIDENTLY_PY), "-m", "pip", "install", "--quiet",
                           "evidently==0.7.23", "pandas<3.1", "pyarrow", "scipy"])  # fmt: skip
    return done.returncode == 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="1e5,1e6", help="reference (= current) row counts")
    p.add_argument("--capture-records", type=float, default=1e7)
    p.add_argument("--no-evidently", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run = {"ours": child_ours, "evidently": child_evidently, "capture": child_capture}
        print(json.dumps(run[args.child](args.data)))
        return
    evidently = not args.no_evidently and ensure_evidently()
    print("| rows | engine | compute s | child wall s | peak RSS MB | max abs diff | vs ours |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for rows in (int(float(r)) for r in args.rows.split(",")):
        folder = generate(rows)
        ours = run_child(sys.executable, "ours", folder)
        print(f"| {rows} | ours | {ours.get('compute_s', float('nan')):.2f} | {ours['wall_s']:.1f} "
              f"| {ours['peak_rss_mb']:.0f} | - | 1.0x | {ours.get('error', '')}")  # fmt: skip
        if not evidently:
            continue
        ev = run_child(str(EVIDENTLY_PY), "evidently", folder)
        if "error" in ev:
            print(
                f"| {rows} | evidently | - | {ev['wall_s']:.1f} | {ev['peak_rss_mb']:.0f} "
                f"| - | - | {ev['error']}"
            )
            continue
        diff = (
            max(abs(ours["scores"][c] - ev["scores"][c]) for c in ev["scores"])
            if ev["scores"]
            else float("nan")
        )
        missing = sorted(set(ours["scores"]) - set(ev["scores"]))
        print(f"| {rows} | evidently 0.7 | {ev['compute_s']:.2f} | {ev['wall_s']:.1f} | "
              f"{ev['peak_rss_mb']:.0f} | {diff:.2e} | {ev['compute_s'] / ours['compute_s']:.1f}x "
              f"{'(no score for ' + ', '.join(missing) + ')' if missing else ''}|")  # fmt: skip
    records = int(args.capture_records)
    if records:
        folder = write_capture(OUT, records)
        cap = run_child(sys.executable, "capture", folder)
        read_s, total_s = cap.get("read_s", np.nan), cap.get("total_s", np.nan)
        print(f"\ncapture read: {records} records -> {cap.get('rows')} rows: read {read_s:.1f} s, "
              f"read+analyse {total_s:.1f} s, peak RSS {cap['peak_rss_mb']:.0f} MB "
              f"{cap.get('error', '')}")  # fmt: skip


if __name__ == "__main__":
    main()
