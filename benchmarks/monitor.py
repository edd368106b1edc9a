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
import platform
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
    """A capture window: `records` JSON requests of one row each, 100k to an hourly file.
    The lines are formatted from a template (a few seconds a million); the first lines of
    each file are checked against `capture_record`, the serving capture's own writer."""
    from datetime import UTC, datetime

    import orjson

    from workloads.serving.capture import Captured, capture_record

    target = folder / f"capture-{records}"
    if (target / "done").exists():
        return target
    rng = np.random.default_rng(seed)
    per_file = 100_000
    fields = [f'\\"{c}\\":{{}}' for c in NUMERIC] + [f'\\"{c}\\":\\"v{{}}\\"' for c in CATEGORICAL]
    row = ",".join(fields)
    for f, start in enumerate(range(0, records, per_file)):
        n = min(per_file, records - start)
        when = datetime(2026, 11, 30, f % 24, tzinfo=UTC)
        path = target / "bench" / "AllTraffic" / f"{when:%Y/%m/%d/%H}" / f"{f:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        nums = rng.normal(0, 1, (n, len(NUMERIC))).round(4)
        cats = rng.integers(0, 3, (n, len(CATEGORICAL)))
        template = (
            '{{"captureData":{{"endpointInput":{{"observedContentType":"application/json",'
            '"mode":"INPUT","data":"{{\\"instances\\":[{{' + row + '}}]}}","encoding":"JSON"}},'
            '"endpointOutput":{{"observedContentType":"application/json","mode":"OUTPUT",'
            '"data":"{{\\"predictions\\":[{{\\"label\\":{}}}]}}","encoding":"JSON"}}}},'
            '"eventMetadata":{{"eventId":"e{}","inferenceTime":"'
            + f"{when:%Y-%m-%dT%H:%M:%S}.000Z"
            + '"}},"eventVersion":"0"}}\n'
        )
        num_text, cat_list = [[repr(v) for v in r] for r in nums.tolist()], cats.tolist()
        lines = [
            template.format(*num_text[i], *cat_list[i], int(cat_list[i][0] > 0), start + i)
            for i in range(n)
        ]
        for i in range(3):  # the same record the serving capture writes
            body = orjson.dumps({"instances": [
                {c: float(nums[i, j]) for j, c in enumerate(NUMERIC)}
                | {c: f"v{cats[i, j]}" for j, c in enumerate(CATEGORICAL)}]})  # fmt: skip
            out = orjson.dumps({"predictions": [{"label": int(cats[i, 0] > 0)}]})
            rec = capture_record(Captured(JSON, body, out, JSON, None, when), f"e{start + i}")
            assert orjson.loads(lines[i]) == rec, (lines[i], rec)
            assert orjson.loads(orjson.loads(lines[i])["captureData"]["endpointInput"]["data"])
        with path.open("w") as fh:
            fh.writelines(lines)
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
    started, cpu = time.perf_counter(), time.process_time()
    window = read_window(baseline, str(folder), Options())
    read_s, read_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    report = analyse(baseline, window, Options())
    return {
        "read_s": read_s,
        "read_cpu_s": read_cpu_s,
        "total_s": time.perf_counter() - started,
        "total_cpu_s": time.process_time() - cpu,
        "rows": report["rows"],
    }


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
    result = {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "load": os.getloadavg()[0],
    }
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
    p.add_argument("--rows", default="1e5,1e6", help='reference (= current) row counts, or ""')
    p.add_argument("--capture-records", type=float, default=1e7)
    p.add_argument("--no-evidently", action="store_true")
    p.add_argument("--repeat", type=int, default=3, help="runs of each contender, alternated")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run = {"ours": child_ours, "evidently": child_evidently, "capture": child_capture}
        print(json.dumps(run[args.child](args.data)))
        return
    evidently = not args.no_evidently and ensure_evidently()
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
          f"load average at start {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("\n| rows | run | engine | compute s | compute CPU s | child wall s | child CPU s "
          "| peak RSS MB | load | max abs diff |")  # fmt: skip
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    summary = []
    for rows in (int(float(r)) for r in args.rows.split(",") if r):
        folder = generate(rows)
        runs: dict[str, list[dict]] = {"ours": [], "evidently": []}
        for rep in range(args.repeat):  # alternate who goes first
            order = ["ours", "evidently"] if rep % 2 == 0 else ["evidently", "ours"]
            for engine in order if evidently else ["ours"]:
                python = sys.executable if engine == "ours" else str(EVIDENTLY_PY)
                run = run_child(python, engine, folder)
                runs[engine].append(run)
                diff = "-"
                if engine == "evidently" and runs["ours"] and "scores" in run:
                    mine = runs["ours"][-1].get("scores", {})
                    diff = f"{max(abs(mine[c] - run['scores'][c]) for c in mine):.1e}"
                    if set(run["scores"]) != set(mine):
                        diff += " (columns differ)"
                print(f"| {rows} | {rep + 1} | {engine} | {run.get('compute_s', np.nan):.2f} "
                      f"| {run.get('compute_cpu_s', np.nan):.2f} | {run['wall_s']:.1f} "
                      f"| {run['cpu_s']:.1f} | {run['peak_rss_mb']:.0f} | {run['load']:.1f} "
                      f"| {diff} {run.get('error', '')}|", flush=True)  # fmt: skip
        summary.append((rows, runs))
    print("\nmedians: | rows | engine | compute s | compute CPU s | child CPU s | peak RSS MB |")
    for rows, runs in summary:
        med = {e: _medians(r) for e, r in runs.items() if r}
        for engine, m in med.items():
            ratio = ""
            if engine == "evidently" and "ours" in med:
                o = med["ours"]
                ratio = (f" | {m['compute_s'] / o['compute_s']:.1f}x wall, "
                         f"{m['compute_cpu_s'] / o['compute_cpu_s']:.1f}x CPU, "
                         f"{m['peak_rss_mb'] / o['peak_rss_mb']:.2f}x memory of ours")  # fmt: skip
            print(f"| {rows} | {engine} | {m['compute_s']:.2f} | {m['compute_cpu_s']:.2f} "
                  f"| {m['cpu_s']:.1f} | {m['peak_rss_mb']:.0f}{ratio} |")  # fmt: skip
    records = int(args.capture_records)
    if records:
        folder = write_capture(OUT, records)
        caps = []
        for rep in range(args.repeat):
            cap = run_child(sys.executable, "capture", folder)
            caps.append(cap)
            print(f"capture {rep + 1}: {records} records -> {cap.get('rows')} rows: read "
                  f"{cap.get('read_s', np.nan):.1f} s ({cap.get('read_cpu_s', np.nan):.1f} CPU s), "
                  f"read+analyse {cap.get('total_s', np.nan):.1f} s "
                  f"({cap.get('total_cpu_s', np.nan):.1f} CPU s), child {cap['wall_s']:.1f} s, "
                  f"peak RSS {cap['peak_rss_mb']:.0f} MB, load {cap['load']:.1f} "
                  f"{cap.get('error', '')}", flush=True)  # fmt: skip
        m = _medians(caps)
        text = {
            k: f"{m.get(k, np.nan):.1f}" for k in ("read_s", "read_cpu_s", "total_s", "total_cpu_s")
        }
        print(f"capture median: read {text['read_s']} s ({text['read_cpu_s']} CPU s), "
              f"read+analyse {text['total_s']} s ({text['total_cpu_s']} CPU s), "
              f"peak RSS {m['peak_rss_mb']:.0f} MB")  # fmt: skip


def _medians(runs: list[dict]) -> dict[str, float]:
    keys = {k for r in runs for k, v in r.items() if isinstance(v, float | int)}
    return {k: float(np.median([r[k] for r in runs if k in r])) for k in keys}


if __name__ == "__main__":
    main()
