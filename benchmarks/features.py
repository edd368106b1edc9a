"""Point-in-time training set benchmark: ours vs pandas merge_asof, polars join_asof, Feast local.

    .venv/bin/python benchmarks/features.py                      # 10M feature rows, 1M labels
    .venv/bin/python benchmarks/features.py --rows 1e6 --labels 1e5 --repeats 3
    .venv/bin/python benchmarks/features.py --small-rows 1e6,3e6   # + scales where Feast
                                                                   # finishes (labels: rows/10)

The data is generated deterministically (seeded numpy) and written once as parquet under
`benchmarks/out/`: ~100k entities, feature rows with three numeric features and a
categorical one at random times over a year, label rows at random times. Every engine starts
from the same parquet files and produces the same left join (newest feature row at or before
each label's time, per entity), in a fresh child process, so its peak memory is its own:
the parent reads each child's peak RSS from `os.wait4`.

- ours:   `workloads.features.pit_files.point_in_time_join_parquet`, as the local store's
          `training_set` runs it: labels as a DataFrame, the features straight from parquet
          (the keys joined by polars `join_asof`, only matched rows read back)
- ours-duckdb: the same with DuckDB's ASOF JOIN as the engine (without the `features` extra)
- pandas: `pandas.merge_asof(..., by=entity, direction="backward")` (needs both sides sorted)
- polars: `polars.DataFrame.join_asof(by=entity, strategy="backward")` on both files read
          whole, sorted by time first (stable), the label order restored after
- feast:  a Feast repo in a temp dir (`offline_store: file`, a FileSource on the parquet file,
          `get_historical_features(...).to_df()`), in its own venv `benchmarks/.venv-feast`,
          created here if missing (`pip install feast`).

Runs go round robin (ours, pandas, polars, ours, ...) so background load falls on all alike.
Every run's result is fingerprinted (rows, matched rows, sums); the script exits non-zero when
an engine's fingerprint differs from ours. A child that runs past `--timeout` or over
`--memory-cap-gb` is stopped and reported so.
Seconds are medians over `--repeats` runs, end to end from the parquet files; "join" is the
part after the data is in memory; "child CPU" is the child's user+sys time (all threads,
imports included), which other load on a shared machine disturbs less than wall time.
Results also go to `benchmarks/out/features-<rows>-<labels>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
FEAST_VENV = ROOT / "benchmarks" / ".venv-feast"
FEAST_PY = FEAST_VENV / "bin" / "python"
ENGINES = ("ours", "ours-duckdb", "pandas", "polars", "feast")
FEATURES = ["f_num1", "f_num2", "f_int", "f_cat"]
CATEGORIES = ["basic", "standard", "pro", "enterprise", "trial", "edu", "gov", "partner"]
SPAN_S = 365 * 86400
START = "2024-01-01T00:00:00"


# --- data ----------------------------------------------------------------------------------


def generate(folder: Path, rows: int, labels: int, entities: int, seed: int = 7) -> None:
    """Write features.parquet and labels.parquet (skipped when already there)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = folder / "DONE"
    if done.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = np.datetime64(START, "us")
    # One microsecond-resolution time per row: ties between rows of one entity are
    # practically impossible, so every engine's answer is the same single row.
    feature_times = start + rng.integers(0, SPAN_S * 1_000_000, rows).astype("timedelta64[us]")
    features = pa.table(
        {
            "entity_id": rng.integers(0, entities, rows, dtype=np.int64),
            "event_timestamp": pa.array(feature_times, pa.timestamp("us", tz="UTC")),
            "f_num1": rng.normal(size=rows),
            "f_num2": rng.exponential(size=rows),
            "f_int": rng.integers(0, 1000, rows, dtype=np.int64),
            "f_cat": pa.array(np.array(CATEGORIES, dtype=object)[rng.integers(0, 8, rows)]),
        }
    )
    pq.write_table(features, folder / "features.parquet", row_group_size=1_000_000)
    # Labels: some entities have no features at all (ids past the range), some labels come
    # before any of their entity's features - both must get nulls.
    label_times = start + rng.integers(0, SPAN_S * 1_000_000, labels).astype("timedelta64[us]")
    label_table = pa.table(
        {
            "entity_id": rng.integers(0, int(entities * 1.02), labels, dtype=np.int64),
            "event_timestamp": pa.array(label_times, pa.timestamp("us", tz="UTC")),
            "label": rng.integers(0, 2, labels, dtype=np.int64),
        }
    )
    pq.write_table(label_table, folder / "labels.parquet")
    pd.DataFrame({"rows": [rows], "labels": [labels], "entities": [entities]}).to_json(done)


# --- engines (run in a child process) -------------------------------------------------------


def load(folder: Path):
    """Both parquet files as pandas DataFrames (the same way for ours and pandas)."""
    import pandas as pd
    import pyarrow as pa

    labels = pd.read_parquet(folder / "labels.parquet")
    features = pd.read_parquet(folder / "features.parquet")
    # The Arrow reader's buffers are freed after the conversion, but its allocator keeps
    # them; hand them back so the peak RSS measures the join, not the reader's cache.
    pa.default_memory_pool().release_unused()
    return labels, features


def run_ours(folder: Path):
    """As `training_set` runs it on the local offline store: the labels as a DataFrame, the
    feature rows straight from the parquet file."""
    import pandas as pd

    from workloads.features.pit_files import point_in_time_join_parquet

    t0 = time.perf_counter()
    labels = pd.read_parquet(folder / "labels.parquet")
    t1 = time.perf_counter()
    out = point_in_time_join_parquet(
        labels,
        [folder / "features.parquet"],
        entity_column="entity_id",
        label_time_column="event_timestamp",
        feature_entity_column="entity_id",
        feature_time_column="event_timestamp",
    )
    return t1 - t0, time.perf_counter() - t1, out


def run_ours_duckdb(folder: Path):
    """Ours with DuckDB as the engine (as without the `features` extra, or past
    MLINFRA_PIT_IN_MEMORY_ROWS feature rows)."""
    from workloads.features import pit

    pit.ENGINE = "duckdb"
    return run_ours(folder)


def run_pandas(folder: Path):
    import pandas as pd

    t0 = time.perf_counter()
    labels, features = load(folder)
    t1 = time.perf_counter()
    # merge_asof needs both sides sorted on the time key; the label order is restored after.
    labels = labels.reset_index(names="_row").sort_values("event_timestamp", kind="stable")
    right = features.rename(columns={"event_timestamp": "feature_time"}).sort_values(
        "feature_time", kind="stable"
    )
    out = pd.merge_asof(
        labels,
        right,
        left_on="event_timestamp",
        right_on="feature_time",
        by="entity_id",
        direction="backward",
        allow_exact_matches=True,
    )
    out = out.sort_values("_row").drop(columns=["_row", "feature_time"]).reset_index(drop=True)
    return t1 - t0, time.perf_counter() - t1, out


def run_polars(folder: Path):
    import polars as pl

    t0 = time.perf_counter()
    labels = pl.read_parquet(folder / "labels.parquet").with_row_index("_row")
    features = pl.read_parquet(folder / "features.parquet")
    t1 = time.perf_counter()
    # join_asof needs both sides sorted on the time key (within each entity); a stable sort
    # keeps the written order among equal times, and "backward" takes the last of them.
    out = (
        labels.sort("event_timestamp", maintain_order=True)
        .join_asof(
            features.rename({"event_timestamp": "feature_time"}).sort(
                "feature_time", maintain_order=True
            ),
            left_on="event_timestamp",
            right_on="feature_time",
            by="entity_id",
            strategy="backward",
            check_sortedness=False,  # sorted just above; polars cannot check it per group
        )
        .sort("_row")
        .drop("_row", "feature_time")
    )
    return t1 - t0, time.perf_counter() - t1, out


def run_feast(folder: Path):
    from datetime import timedelta

    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Float64, Int64, String

    with tempfile.TemporaryDirectory(prefix="feast-bench-") as repo:
        Path(repo, "feature_store.yaml").write_text(
            "project: bench\n"
            f"registry: {repo}/registry.db\n"
            "provider: local\n"
            "online_store:\n"
            "  type: sqlite\n"
            f"  path: {repo}/online.db\n"
            "offline_store:\n"
            "  type: file\n"
            "entity_key_serialization_version: 3\n"
        )
        source = FileSource(
            path=str(folder / "features.parquet"), timestamp_field="event_timestamp"
        )
        entity = Entity(name="entity", join_keys=["entity_id"])
        view = FeatureView(
            name="fv",
            entities=[entity],
            ttl=timedelta(0),  # 0: no TTL, the same unbounded look-back as the others
            schema=[
                Field(name="f_num1", dtype=Float64),
                Field(name="f_num2", dtype=Float64),
                Field(name="f_int", dtype=Int64),
                Field(name="f_cat", dtype=String),
            ],
            source=source,
        )
        store = FeatureStore(repo_path=repo)
        store.apply([entity, view])
        t0 = time.perf_counter()
        labels = pd.read_parquet(folder / "labels.parquet")
        labels["_row"] = range(len(labels))
        t1 = time.perf_counter()
        job = store.get_historical_features(
            entity_df=labels, features=[f"fv:{name}" for name in FEATURES]
        )
        out = job.to_df()
        out = out.sort_values("_row").drop(columns=["_row"]).reset_index(drop=True)
        return t1 - t0, time.perf_counter() - t1, out


def summary(out) -> dict:
    """A fingerprint of the result, to check that the engines agree (a pandas or polars
    frame: numpy views only, nulls as NaN)."""
    import numpy as np

    f_num1 = np.asarray(out["f_num1"].to_numpy(), dtype=float)
    return {
        "rows": int(len(out)),
        "matched": int((~np.isnan(f_num1)).sum()),
        "f_num1_sum": round(float(np.nansum(f_num1)), 4),
        "f_int_sum": int(np.nansum(np.asarray(out["f_int"].to_numpy(), dtype=float))),
        "label_sum": int(np.asarray(out["label"].to_numpy()).sum()),
        "f_cat_pro": int((np.asarray(out["f_cat"].to_numpy(), dtype=object) == "pro").sum()),
    }


def child(engine: str, folder: Path) -> None:
    runner = {
        "ours": run_ours,
        "ours-duckdb": run_ours_duckdb,
        "pandas": run_pandas,
        "polars": run_polars,
        "feast": run_feast,
    }[engine]
    load_s, join_s, out = runner(folder)
    print(json.dumps({"load_s": load_s, "join_s": join_s, "summary": summary(out)}), flush=True)


# --- the parent -------------------------------------------------------------------------------


def ensure_feast_venv() -> None:
    if FEAST_PY.exists():
        return
    print(f"creating {FEAST_VENV} (pip install feast) ...", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(FEAST_VENV)], check=True)
    subprocess.run([str(FEAST_PY), "-m", "pip", "install", "--quiet", "feast>=0.40"], check=True)


def run_child(engine: str, folder: Path, timeout: float, memory_cap_gb: float) -> dict:
    python = str(FEAST_PY) if engine == "feast" else sys.executable
    cap = int(memory_cap_gb * 2**30)

    def limit() -> None:  # in the child: its own process group, and an address-space cap
        os.setsid()
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [python, __file__, "--child", engine, "--data", str(folder)],
            stdout=stdout,
            stderr=stderr,
            preexec_fn=limit,
            env=env,
            cwd=ROOT,
        )
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        stdout.seek(0)
        stderr.seek(0)
        lines = [ln for ln in stdout.read().splitlines() if ln.startswith("{")]
        err = stderr.read()
    result = {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,  # the whole child: imports, load, join
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }
    if timed_out:
        result["error"] = f"stopped after the {timeout:.0f} s timeout"
    elif proc.returncode != 0 or not lines:
        tail = err.strip().splitlines()[-1:] or ["no output"]
        oom = "MemoryError" in err or "std::bad_alloc" in err or "Cannot allocate" in err
        result["error"] = (
            f"ran out of memory under the {memory_cap_gb:g} GB cap"
            if oom
            else f"exit {proc.returncode}: {tail[0][:200]}"
        )
    else:
        result.update(json.loads(lines[-1]))
    return result


def bench(rows: int, labels: int, entities: int, engines: list[str], repeats: int, args) -> bool:
    """Run every engine at one scale; False when their results differ."""
    folder = OUT / f"features-data-{rows}-{labels}-{entities}"
    print(f"\n== {rows:,} feature rows, {labels:,} labels, {entities:,} entities ==", flush=True)
    t = time.perf_counter()
    generate(folder, rows, labels, entities)
    print(f"data ready in {time.perf_counter() - t:.1f} s: {folder}", flush=True)
    # Round robin (ours, pandas, polars, ours, ...): background load on a shared machine
    # then falls on every engine alike. An engine that fails is not run again.
    runs: dict[str, list[dict]] = {engine: [] for engine in engines}
    for i in range(repeats):
        for engine in engines:
            n = 1 if engine == "feast" and rows > args.feast_repeat_below else repeats
            if i >= n or any("error" in r for r in runs[engine]):
                continue
            run = run_child(engine, folder, args.timeout, args.memory_cap_gb)
            runs[engine].append(run)
            shown = run.get("error") or (
                f"{run['load_s'] + run['join_s']:.2f} s (join {run['join_s']:.2f} s), "
                f"child CPU {run['cpu_s']:.2f} s, peak RSS {run['peak_rss_mb']:.0f} MB"
            )
            print(f"  {engine:<11} run {i + 1}/{n}: {shown}", flush=True)
    results: dict[str, dict] = {}
    for engine, done in runs.items():
        ok = [r for r in done if "error" not in r]
        if ok:
            results[engine] = {
                "seconds": statistics.median(r["load_s"] + r["join_s"] for r in ok),
                "join_seconds": statistics.median(r["join_s"] for r in ok),
                "cpu_seconds": statistics.median(r["cpu_s"] for r in ok),
                "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in ok),
                "runs": len(ok),
                "summary": ok[-1]["summary"],
            }
            differing = [r["summary"] for r in ok if r["summary"] != ok[0]["summary"]]
            if differing:
                results[engine]["unstable"] = differing
        else:
            results[engine] = {"error": done[-1]["error"], "peak_rss_mb": done[-1]["peak_rss_mb"]}
    agree = report(results)
    scale = f"{rows}-{labels}"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"features-{scale}.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "labels": labels,
                "entities": entities,
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "load_average": os.getloadavg(),
                "agree": agree,
                "results": results,
            },
            indent=2,
        )
    )
    return agree


def report(results: dict[str, dict]) -> bool:
    """Print the table; False when an engine's matched rows or sums differ from ours."""
    print(
        f"  {'engine':<12}{'seconds':>10}{'join s':>10}{'child CPU s':>13}{'peak RSS MB':>14}"
        f"{'vs ours':>10}{'CPU vs ours':>13}"
    )
    ours = results.get("ours", {}).get("seconds")
    ours_cpu = results.get("ours", {}).get("cpu_seconds")
    for engine, r in results.items():
        if "error" in r:
            print(
                f"  {engine:<12}{'-':>10}{'-':>10}{'-':>13}{r['peak_rss_mb']:>14.0f}  {r['error']}"
            )
            continue
        ratio = f"{r['seconds'] / ours:.2f}x" if ours else "-"
        cpu_ratio = f"{r['cpu_seconds'] / ours_cpu:.2f}x" if ours_cpu else "-"
        print(
            f"  {engine:<12}{r['seconds']:>10.2f}{r['join_seconds']:>10.2f}"
            f"{r['cpu_seconds']:>13.2f}{r['peak_rss_mb']:>14.0f}{ratio:>10}{cpu_ratio:>13}"
        )
    agree = True
    for engine, r in results.items():
        if r.get("unstable"):
            agree = False
            print(f"  {engine}: ITS RUNS DISAGREE: {json.dumps(r['unstable'][0])}")
    summaries = {e: r["summary"] for e, r in results.items() if "summary" in r}
    if not summaries:
        return agree
    reference = summaries.get("ours") or next(iter(summaries.values()))
    print(f"  result of ours: {json.dumps(reference)}")
    matched_keys = ("matched", "f_num1_sum", "f_int_sum", "f_cat_pro")
    for engine, summary in summaries.items():
        if summary == reference:
            print(f"  {engine}: the same result")
        elif all(summary[k] == reference[k] for k in matched_keys):
            print(
                f"  {engine}: the same matched rows and values, but {summary['rows']:,} rows "
                f"instead of {reference['rows']:,} (some label rows that match no feature row "
                "are missing from it)"
            )
        else:
            agree = False
            print(f"  {engine}: A DIFFERENT RESULT: {json.dumps(summary)}")
    return agree


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, Python {platform.python_version()}"


def count(text: str) -> int:
    return int(float(text))


def counts(text: str) -> list[int]:
    return [count(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=count, default=10_000_000, help="feature rows")
    parser.add_argument("--labels", type=count, default=1_000_000, help="label rows")
    parser.add_argument("--entities", type=count, default=100_000)
    parser.add_argument(
        "--small-rows",
        type=counts,
        default=[],
        help="also run these scales (comma-separated feature rows), e.g. 1e6,3e6",
    )
    parser.add_argument(
        "--small-labels", type=counts, default=[], help="label rows per --small-rows scale"
    )
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--feast-repeat-below",
        type=count,
        default=2_000_000,
        help="Feast runs once at scales above this many feature rows (it is slow)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per child run")
    parser.add_argument("--memory-cap-gb", type=float, default=12)
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data)
        return
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"--engines: unknown {unknown}; choose from {', '.join(ENGINES)}")
    if "feast" in engines:
        ensure_feast_venv()
    print(f"machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {load_average()}")
    agree = bench(args.rows, args.labels, args.entities, engines, args.repeats, args)
    for i, rows in enumerate(args.small_rows):
        labels = args.small_labels[i] if i < len(args.small_labels) else max(1, rows // 10)
        agree &= bench(rows, labels, args.entities, engines, args.repeats, args)
    print(f"\ndone {datetime.now(UTC):%H:%M} UTC; {load_average()}")
    if not agree:
        sys.exit("the engines' results differ (see above)")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


if __name__ == "__main__":
    main()
