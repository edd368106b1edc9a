"""Serving benchmark: our server against the bare HTTP stack, the in-process limit and peers.

    .venv/bin/python benchmarks/serve.py [--duration 3] [--rounds 3] [--concurrency 1 8 32]
        [--models reference wide image text] [--skip-peers] [--before DIR]

Models, trained here with `python -m workloads.train`: `reference` (tabular, hidden 128x64:
HTTP and JSON handling dominate), `wide` (tabular, hidden 2048x2048x2048: the forward pass
dominates), `image` (the image task on `defects` images, base64 PNG in JSON) and `text` (the
text task on `tickets`). Each server runs on 127.0.0.1 with 2 worker processes (1 torch thread
each) and is driven by `wrk` (its own process, a closed loop of C connections, one instance per
request, `apt-get install wrk`). All servers start once and are driven round robin (every
server, every concurrency, `--rounds` times, `--duration` seconds each, after a warm-up), each
figure the median over the rounds; only the server being measured runs (the others are
SIGSTOPped). Printed side by side: requests/s, p50 and p99 latency (ms) and requests per
CPU-second of the server's processes (from /proc, every descendant included), and each server
as a fraction of the HTTP ceiling; every server gets the same /ping probe at the highest
concurrency. Contenders:

- HTTP ceiling: a bare ASGI app on our stack and layout (uvicorn + httptools + uvloop, each
  worker on its own SO_REUSEPORT socket) that reads the body and answers a fixed 40-byte JSON;
- ours, batching on / off: `python -m workloads.serve` (`--before DIR`: also the server from
  another checkout, batching on, in the same rounds);
- in-process limit: `prepare_records` + `predict_matrix` with no HTTP: the C outstanding
  requests split over 2 processes, back-to-back batches of C/2 records; latency = one batch;
- TorchServe 0.12 (batching on: batch size 32, max delay 5 ms) with a handler that loads the
  same artifact through `workloads.training.artifact.load_model`;
- BentoML 1.4 (adaptive batching, max 32) and LitServe 0.2.19 (batch 32, 5 ms), same loader
  (tabular models only; the image and text models run ours against TorchServe).

The peers live in `benchmarks/.venv-peers` (torch==2.13.0 first, then torchserve,
torch-model-archiver, bentoml, pandas, pillow, tokenizers; TorchServe needs Java 17) and
`benchmarks/.venv-litserve`, created on first use. Results also go to
`benchmarks/out/serve.json`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
PEERS = ROOT / "benchmarks" / ".venv-peers"
PY = sys.executable
MODELS = {"reference": "128,64", "wide": "2048,2048,2048"}  # tabular: hidden sizes
# The image and text tasks: (what the model is, its training hyperparameters).
TASK_MODELS = {
    "image": ("small ResNet, 64 px defects images as base64 PNG", ["task=image", "epochs=1"]),
    "text": (
        "Transformer encoder, support-ticket texts",
        ["task=text", "target=category", "epochs=1"],
    ),
}
WORKERS = 2  # one per core on the 2-core reference machine, for every server
OURS_ON, OURS_OFF, LIMIT = "ours, batching on", "ours, batching off", "in-process limit"
CEILING = "HTTP ceiling (bare ASGI)"
TORCHSERVE, BENTOML = "TorchServe, batching on", "BentoML, batching on"
LITSERVE = "LitServe, batching on"
OURS_BEFORE = "ours (--before), batching on"
ORDER = [CEILING, OURS_ON, OURS_BEFORE, OURS_OFF, LIMIT, TORCHSERVE, BENTOML, LITSERVE]
LITSERVE_VENV = ROOT / "benchmarks" / ".venv-litserve"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Contender:
    """A running server: where to send requests, its health URL, its first process."""

    url: str
    ping: str
    pid: int

    def cpu_seconds(self) -> float:
        return sum(cpu for _, cpu in server_processes(self.pid))

    def pause(self) -> None:
        """SIGSTOP every process of the server: an idle server burns no CPU between its
        rounds (LitServe's batch loop polls every 1 ms), so it takes none from the one
        being measured."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        time.sleep(0.3)  # let every process run again before the load starts

    def _signal(self, signum: int) -> None:
        for pid, _ in server_processes(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def server_processes(root: int) -> list[tuple[int, float]]:
    """(pid, CPU seconds) of a server's processes: `root`, its process group and every
    descendant (BentoML's and TorchServe's workers start their own process groups). CPU
    seconds are user + system, own + waited-for children, from /proc."""
    procs: dict[int, tuple[int, int, float]] = {}  # pid -> (ppid, pgrp, cpu)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        # fields after "(comm)": state ppid pgrp session ... utime(11) stime cutime cstime
        cpu = sum(int(x) for x in fields[11:15]) / CLK_TCK
        procs[int(entry.name)] = (int(fields[1]), int(fields[2]), cpu)
    members = {pid for pid, (_, pgrp, _) in procs.items() if pgrp == root} | {root}
    grew = True
    while grew:
        found = {pid for pid, (ppid, _, _) in procs.items() if ppid in members}
        grew = not found <= members
        members |= found
    return [(pid, procs[pid][2]) for pid in members if pid in procs]


# --- models -----------------------------------------------------------------------------------


def training_table(rows: int, seed: int = 0):
    """The churn reference training set: labels joined point-in-time with both feature groups."""
    from workloads.features.pit import point_in_time_join
    from workloads.local import churn

    data = churn.generate_churn(rows, seed=seed)
    joined = data.labels
    for features in (data.profile, data.activity):
        joined = point_in_time_join(
            joined,
            features,
            entity_column=churn.ENTITY,
            label_time_column=churn.TIME,
            feature_time_column=churn.TIME,
        )
    return joined[churn.FEATURES + [churn.TARGET]]


def train(name: str, train_path: Path, hps: list[str]) -> Path:
    """`python -m workloads.train` once (the artifact is kept under benchmarks/out/models)."""
    work = OUT / "models" / name
    model_dir = work / "model"
    if not (model_dir / "meta.json").is_file():
        cmd = [PY, "-m", "workloads.train", "--train", str(train_path)]
        cmd += ["--model-dir", str(model_dir), "--output-data-dir", str(work / "output")]
        cmd += ["--checkpoint-dir", str(work / "ckpt"), "--failure-file", str(work / "fail")]
        for hp in hps:
            cmd += ["--hp", hp]
        print(f"training the {name} model ...", flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return model_dir


def prepare_models(names: list[str]) -> dict[str, tuple[Path, dict]]:
    """Train the models once; returns each one's dir and a sample instance."""
    models = {}
    tabular = [n for n in names if n in MODELS]
    if tabular:
        from workloads.local import churn

        table = training_table(4000)
        sample = table[churn.FEATURES].iloc[0]
        record = {k: (None if v != v else v) for k, v in sample.astype(object).to_dict().items()}
        record = {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()}
        for name in tabular:
            path = OUT / "models" / name / "train.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            table.iloc[: 4000 if name == "reference" else 800].to_csv(path, index=False)
            hps = [f"target={churn.TARGET}", f"hidden_sizes={MODELS[name]}"]
            hps.append("epochs=10" if name == "reference" else "epochs=1")
            models[name] = (train(name, path, hps), record)
    if "image" in names:
        from workloads.local.defects import write_defects

        folder = write_defects(OUT / "models" / "image" / "data", 400, size=64, seed=0)
        png = sorted(folder.rglob("*.png"))[0].read_bytes()
        record = {"image": base64.b64encode(png).decode()}
        models["image"] = (train("image", folder, TASK_MODELS["image"][1]), record)
    if "text" in names:
        from workloads.local.tickets import generate_tickets

        path = OUT / "models" / "text" / "tickets.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        tickets = generate_tickets(2000, seed=0)
        tickets.to_csv(path, index=False)
        record = {"text": str(tickets["text"].iloc[0])}
        models["text"] = (train("text", path, TASK_MODELS["text"][1]), record)
    return models


# --- processes and load ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(name: str, cmd: list[str], ready, cwd: Path = ROOT, env: dict | None = None):
    """Start a server in its own process group, wait until `ready()` is true, stop it after."""
    log = OUT / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 180
            while not ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} did not start (see {log}):\n{tail}")
                time.sleep(0.3)
            yield proc
        finally:
            tree = [pid for pid, _ in server_processes(proc.pid)]
            for pid in tree:  # a stopped process cannot drain
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            time.sleep(1)
            for pid in tree:  # workers in process groups of their own, if still there
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def contender(
    name: str, cmd: list[str], url: str, ping: str, body: bytes, cwd: Path = ROOT, env=None
) -> Iterator[Contender]:
    """`running`, ready once `url` answers `body`, then warmed so every worker has loaded,
    then paused (SIGSTOP) until its rounds."""
    with running(name, cmd, lambda: post_ok(url, body), cwd=cwd, env=env) as proc:
        for _ in range(8 * WORKERS):
            post_ok(url, body, timeout=60)
        server = Contender(url, ping, proc.pid)
        server.pause()  # idle until its rounds (measure resumes it)
        yield server


def post_ok(url: str, body: bytes, timeout: float = 5) -> bool:
    import httpx

    try:
        r = httpx.post(
            url, content=body, headers={"content-type": "application/json"}, timeout=timeout
        )
        return r.status_code == 200
    except httpx.HTTPError:
        return False


def get_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def lua_script(body: bytes) -> Path:
    path = OUT / "post.lua"
    text = body.decode().replace("\\", "\\\\").replace("'", "\\'")
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = '{text}'\n"
    )
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * _UNITS[unit]


def wrk(url: str, script: Path, connections: int, seconds: float) -> dict:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    result = {"rps": rps, "requests": requests, "p50_ms": p50, "p99_ms": p99}
    if errors or sock:
        result["errors"] = (errors.group(0) if errors else "") + (sock.group(0) if sock else "")
    return result


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def measure(
    servers: dict[str, Contender], script: Path, levels: list[int], seconds: float, rounds: int
) -> dict:
    """Round robin: every server, every concurrency, `rounds` times; each figure is the median
    over the rounds. Interleaving spreads the shared machine's load bursts over everyone.
    Only the server being measured runs: the others are SIGSTOPped. Each cell also records
    the CPU seconds the server's processes spent (requests per CPU-second is the steadier
    figure on a shared machine), and at the highest concurrency every server gets the same
    /ping probe."""
    for server in servers.values():
        server.pause()
    samples: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in levels} for name in servers}
    pings: dict[str, list[float]] = {name: [] for name in servers}
    for r in range(rounds):
        for name, server in servers.items():
            server.resume()
            if r == 0:
                wrk(server.url, script, max(levels), 2)  # warm-up: caches, connections, JIT
            for c in levels:
                cpu = server.cpu_seconds()
                if c == max(levels):
                    with ping_probe(server.ping) as probe:
                        cell = wrk(server.url, script, c, seconds)
                    pings[name] += probe
                else:
                    cell = wrk(server.url, script, c, seconds)
                cell["cpu_s"] = server.cpu_seconds() - cpu
                cell["rps_per_cpu_s"] = cell["requests"] / max(cell["cpu_s"], 1e-9)
                samples[name][c].append(cell)
                print(
                    f"  round {r + 1}: {name:<24} c={c:<3} {cell['rps']:>8.0f} req/s  p50 "
                    f"{cell['p50_ms']:7.2f} ms  p99 {cell['p99_ms']:7.2f} ms  "
                    f"{cell['cpu_s']:5.2f} CPU-s  {cell['rps_per_cpu_s']:>6.0f} req/CPU-s "
                    f"{cell.get('errors', '')}",
                    flush=True,
                )
            server.pause()
    rows: dict = {}
    for name, by_c in samples.items():
        rows[name] = {}
        for c, cells in by_c.items():
            keys = ("rps", "p50_ms", "p99_ms", "cpu_s", "rps_per_cpu_s")
            rows[name][c] = {k: median([x[k] for x in cells]) for k in keys}
            errors = [x["errors"] for x in cells if "errors" in x]
            if errors:
                rows[name][c]["errors"] = errors
        if pings[name]:
            rows[name]["ping_max_ms"] = max(pings[name])
            print(
                f"  /ping while '{name}' ran at c={max(levels)}: max {max(pings[name]):.1f} ms "
                f"over {len(pings[name])} probes"
            )
    return rows


@contextlib.contextmanager
def ours(model_dir: Path, body: bytes, batching: bool, root: Path = ROOT) -> Iterator[Contender]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [PY, "-m", "workloads.serve", "--model-dir", str(model_dir), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(WORKERS), "--threads", "1"]
    cmd += ["--batching" if batching else "--no-batching"]
    name = f"ours-batching-{'on' if batching else 'off'}{'' if root == ROOT else '-' + root.name}"
    with contender(name, cmd, url + "/invocations", url + "/ping", body, cwd=root) as server:
        yield server


CEILING_CODE = """
import multiprocessing, socket, sys
import uvicorn

ANSWER = b'{"predictions":[{"label":0,"p":0.1250}]}'  # a fixed 40-byte JSON
assert len(ANSWER) == 40
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"40")]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the body, as a real server must
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def worker(port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="off",
        access_log=False, server_header=False, date_header=False, proxy_headers=False,
        backlog=4096)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(port,)) for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
"""


@contextlib.contextmanager
def ceiling(body: bytes) -> Iterator[Contender]:
    """The HTTP ceiling: a bare ASGI app on our stack and process layout (uvicorn + httptools
    + uvloop, WORKERS processes each on its own SO_REUSEPORT socket) that reads the body and
    answers a fixed 40-byte JSON: what no server on this stack can beat."""
    script = OUT / "ceiling.py"
    script.write_text(CEILING_CODE)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [PY, str(script), str(port), str(WORKERS)]
    with contender("ceiling", cmd, url + "/invocations", url + "/ping", body) as server:
        yield server


@contextlib.contextmanager
def ping_probe(url: str):
    """GET /ping every 100 ms on a fresh connection while the load runs; yields latencies (ms)."""
    import threading

    import httpx

    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.wait(0.1):
            t = time.perf_counter()
            try:
                ok = httpx.get(url, timeout=10).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - t) * 1e3 if ok else float("inf"))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join()


INPROC_CODE = """
import json, sys, time, torch
from workloads.training.artifact import load_model
model_dir, batch, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
torch.set_num_threads(1)
p = load_model(model_dir)
records = [json.loads(sys.argv[4]) for _ in range(batch)]
for _ in range(20):
    p.predict_matrix(p.prepare_records(records))
times, end, cpu = [], time.perf_counter() + seconds, time.process_time()
while time.perf_counter() < end:
    t = time.perf_counter()
    p.predict_matrix(p.prepare_records(records))
    times.append(time.perf_counter() - t)
cpu = time.process_time() - cpu
print(json.dumps({"rows": batch * len(times), "elapsed": sum(times), "times": times, "cpu": cpu}))
"""


def in_process(model_dir: Path, record: dict, levels, seconds) -> dict:
    """The model's batched prepare + forward with no HTTP: C outstanding single-row requests
    split over up to WORKERS processes (1 torch thread each, like the servers), each running
    back-to-back batches of C / processes records. Latency = one batch."""
    cells = {}
    for c in levels:
        procs = min(WORKERS, c)
        args = [str(model_dir), str(c // procs), str(seconds), json.dumps(record)]
        running_ = [
            subprocess.Popen([PY, "-c", INPROC_CODE, *args], cwd=ROOT, stdout=subprocess.PIPE)
            for _ in range(procs)
        ]
        outs = [json.loads(p.communicate()[0]) for p in running_]
        times = sorted(t for o in outs for t in o["times"])
        cells[c] = {
            "rps": sum(o["rows"] / o["elapsed"] for o in outs),
            "p50_ms": 1e3 * times[len(times) // 2],
            "p99_ms": 1e3 * times[int(len(times) * 0.99)],
            "rps_per_cpu_s": sum(o["rows"] for o in outs) / sum(o["cpu"] for o in outs),
        }
        cell = cells[c]
        print(
            f"  {'in-process limit':<24} c={c:<3} {cell['rps']:>8.0f} req/s  p50 "
            f"{cell['p50_ms']:7.2f} ms  p99 {cell['p99_ms']:7.2f} ms",
            flush=True,
        )
    return cells


TS_HANDLER = '''
"""TorchServe handler for an mlinfra model artifact (written by benchmarks/serve.py)."""
import json
import sys

sys.path.insert(0, {root!r})

import numpy as np
import torch

from workloads.training.artifact import load_model

MODEL_DIR = {model_dir!r}
_predictor = None


def handle(data, context):
    global _predictor
    if _predictor is None:
        torch.set_num_threads(1)
        _predictor = load_model(MODEL_DIR)
    if data is None:
        return None
    out, mats, index = [None] * len(data), [], []
    for i, row in enumerate(data):  # one entry per request in TorchServe's batch
        body = row.get("body") or row.get("data")
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body)
        try:
            mats.append(_predictor.prepare_records(body["instances"]))
            index.append(i)
        except Exception as exc:
            out[i] = json.dumps({{"error": str(exc)}})
    if mats:
        collate = getattr(_predictor, "collate", None)  # token ids of different lengths
        preds = _predictor.predict_matrix(collate(mats) if collate else np.concatenate(mats))
        start = 0
        for i, m in zip(index, mats):
            out[i] = json.dumps({{"predictions": preds[start : start + len(m)]}})
            start += len(m)
    return out
'''


@contextlib.contextmanager
def torchserve(name: str, model_dir: Path, body: bytes) -> Iterator[Contender]:
    work = OUT / "torchserve" / name
    shutil.rmtree(work, ignore_errors=True)
    (work / "store").mkdir(parents=True)
    handler = work / "handler.py"
    handler.write_text(TS_HANDLER.format(root=str(ROOT), model_dir=str(model_dir)))
    subprocess.run(
        [PEERS / "bin" / "torch-model-archiver", "--model-name", name, "--version", "1.0"]
        + ["--handler", str(handler), "--export-path", str(work / "store")]
        + ["--archive-format", "no-archive", "--force"],
        check=True,
        capture_output=True,
    )
    port, mgmt, metrics = free_port(), free_port(), free_port()
    models = {
        name: {
            "1.0": {
                "defaultVersion": True,
                "marName": name,
                "minWorkers": WORKERS,
                "maxWorkers": WORKERS,
                "batchSize": 32,
                "maxBatchDelay": 5,
                "responseTimeout": 120,
            }
        }
    }
    (work / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{port}\n"
        f"management_address=http://127.0.0.1:{mgmt}\n"
        f"metrics_address=http://127.0.0.1:{metrics}\n"
        f"model_store={work / 'store'}\n"
        f"load_models={name}\n"
        f"models={json.dumps(models)}\n"
        "disable_token_authorization=true\n"
        "install_py_dep_per_model=false\n"
        "async_logging=true\n"
        "job_queue_size=1000\n"
        "default_workers_per_model=2\n"
    )
    cmd = [str(PEERS / "bin" / "torchserve"), "--start", "--foreground", "--ncs"]
    cmd += ["--model-store", str(work / "store"), "--ts-config", str(work / "config.properties")]
    cmd += ["--disable-token-auth"]
    url = f"http://127.0.0.1:{port}/predictions/{name}"
    env = {"PATH": f"{PEERS / 'bin'}:{os.environ['PATH']}", "LOG_LOCATION": str(work / "logs")}
    env["METRICS_LOCATION"] = str(work / "logs")
    ping = f"http://127.0.0.1:{port}/ping"
    with contender(f"torchserve-{name}", cmd, url, ping, body, cwd=work, env=env) as server:
        yield server


def service_dir(peer: str, name: str, template: str, model_dir: Path) -> tuple[Path, int]:
    """A fresh folder with the peer's service.py for `model_dir`, and a free port."""
    work = OUT / peer / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "service.py").write_text(
        template.format(root=str(ROOT), model_dir=str(model_dir), workers=WORKERS)
    )
    return work, free_port()


BENTO_SERVICE = '''
"""BentoML service for an mlinfra model artifact (written by benchmarks/serve.py)."""
import sys

sys.path.insert(0, {root!r})

import bentoml

from workloads.training.artifact import load_model


@bentoml.service(workers={workers}, traffic={{"timeout": 120, "max_concurrency": 1024}})
class Model:
    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)
        self.predictor = load_model({model_dir!r})

    @bentoml.api(route="/invocations", batchable=True, max_batch_size=32, max_latency_ms=1000)
    def invocations(self, instances: list[dict]) -> list:
        return self.predictor.predict_records(instances)
'''


@contextlib.contextmanager
def bentoml(name: str, model_dir: Path, body: bytes) -> Iterator[Contender]:
    work, port = service_dir("bentoml", name, BENTO_SERVICE, model_dir)
    cmd = [str(PEERS / "bin" / "bentoml"), "serve", "service:Model", "--host", "127.0.0.1"]
    cmd += ["--port", str(port)]
    env = {"BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(work / "home")}
    env["PATH"] = f"{PEERS / 'bin'}:{os.environ['PATH']}"
    url = f"http://127.0.0.1:{port}/invocations"
    ping = f"http://127.0.0.1:{port}/readyz"
    with contender(f"bentoml-{name}", cmd, url, ping, body, cwd=work, env=env) as server:
        yield server


LIT_SERVICE = '''
"""LitServe service for an mlinfra model artifact (written by benchmarks/serve.py)."""
import sys

sys.path.insert(0, {root!r})

import litserve as ls
import numpy as np


class Model(ls.LitAPI):
    def setup(self, device):
        import torch

        from workloads.training.artifact import load_model

        torch.set_num_threads(1)
        self.predictor = load_model({model_dir!r})

    def decode_request(self, request):
        return request["instances"]

    def batch(self, inputs):
        return list(inputs)

    def predict(self, batch):  # one entry per request in LitServe's batch
        mats = [self.predictor.prepare_records(instances) for instances in batch]
        preds = self.predictor.predict_matrix(np.concatenate(mats))
        out, start = [], 0
        for m in mats:
            out.append(preds[start : start + len(m)])
            start += len(m)
        return out

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return {{"predictions": output}}


if __name__ == "__main__":
    api = Model(max_batch_size=32, batch_timeout=0.005, api_path="/invocations")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device={workers}, timeout=120)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False)
'''


@contextlib.contextmanager
def litserve(name: str, model_dir: Path, body: bytes) -> Iterator[Contender]:
    work, port = service_dir("litserve", name, LIT_SERVICE, model_dir)
    cmd = [str(LITSERVE_VENV / "bin" / "python"), "service.py", str(port)]
    url, ping = f"http://127.0.0.1:{port}/invocations", f"http://127.0.0.1:{port}/health"
    with contender(f"litserve-{name}", cmd, url, ping, body, cwd=work) as server:
        yield server


def ensure_peers() -> str | None:
    """Create the peers' venv if needed; returns why the peers cannot run, or None."""
    if shutil.which("java") is None:
        return "TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)"
    ready = [PEERS / "bin" / "torchserve", PEERS / "bin" / "bentoml"]
    ready.append(PEERS / "lib" / "python3.11" / "site-packages" / "tokenizers")
    if not all(path.exists() for path in ready):
        print(f"creating {PEERS} ...", flush=True)
        pip = [str(PEERS / "bin" / "pip"), "install", "--quiet"]
        steps = [
            [sys.executable, "-m", "venv", str(PEERS)],
            [*pip, "torch==2.13.0"],  # first: the CPU build; nothing below replaces it
            # pillow and tokenizers: the image and text tasks' artifacts need them
            [*pip, "torchserve", "torch-model-archiver", "bentoml", "pandas", "numpy"]
            + ["pillow", "tokenizers"],
        ]
        problem = _install(steps)
        if problem:
            return problem
    if not (LITSERVE_VENV / "bin" / "litserve").exists():
        # Its own venv: LitServe pins FastAPI/uvicorn versions of its own.
        print(f"creating {LITSERVE_VENV} ...", flush=True)
        pip = [str(LITSERVE_VENV / "bin" / "pip"), "install", "--quiet"]
        steps = [
            [sys.executable, "-m", "venv", str(LITSERVE_VENV)],
            [*pip, "torch==2.13.0"],
            [*pip, "litserve==0.2.19", "pandas", "numpy", "pyarrow"],
        ]
        return _install(steps)
    return None


def _install(steps: list[list[str]]) -> str | None:
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            return f"installing the peers failed: {' '.join(step)}: {done.stderr[-500:]}"
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=3.0, help="seconds per cell and round")
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds (median taken)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    every = [*MODELS, *TASK_MODELS]
    p.add_argument("--models", nargs="+", default=every, choices=every)
    p.add_argument(
        "--skip-peers", action="store_true", help="only ours, the ceiling and the in-process limit"
    )
    p.add_argument(
        "--ours-root",
        type=Path,
        default=ROOT,
        help="run our server from this checkout instead of this one",
    )
    p.add_argument(
        "--before",
        type=Path,
        help="also run our server from this checkout (say, `git archive main workloads` "
        "unpacked), batching on, in the same rounds: before/after figures from one run",
    )
    args = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks/serve.py needs wrk: apt-get install wrk")
    OUT.mkdir(parents=True, exist_ok=True)
    peers_problem = None if not args.skip_peers else "skipped (--skip-peers)"
    peers_problem = peers_problem or ensure_peers()
    models = prepare_models(args.models)
    levels, seconds = args.concurrency, args.duration
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "duration_s": seconds,
        "rounds": args.rounds,
        "models": {},
    }
    for name in args.models:
        model_dir, record = models[name]
        body = json.dumps({"instances": [record]}).encode()
        script = lua_script(body)
        tabular = name in MODELS
        what = f"{MODELS[name]} hidden" if tabular else TASK_MODELS[name][0]
        print(f"\n== {name} model ({what}), one instance per request", flush=True)
        with contextlib.ExitStack() as stack:
            servers = {}
            if tabular:  # the image and text models: ours against TorchServe, batching on
                servers[CEILING] = stack.enter_context(ceiling(body))
            servers[OURS_ON] = stack.enter_context(ours(model_dir, body, True, args.ours_root))
            if args.before:
                servers[OURS_BEFORE] = stack.enter_context(ours(model_dir, body, True, args.before))
            if tabular:
                servers[OURS_OFF] = stack.enter_context(
                    ours(model_dir, body, False, args.ours_root)
                )
            failed = {}
            if peers_problem is None:
                peers = ((TORCHSERVE, torchserve), (BENTOML, bentoml), (LITSERVE, litserve))
                peers = peers if tabular else peers[:1]
                for label, peer in peers:
                    try:  # one peer failing to start is a result too: report it, go on
                        servers[label] = stack.enter_context(peer(name, model_dir, body))
                    except Exception as exc:
                        print(f"  {label}: FAILED to start: {exc}", flush=True)
                        failed[label] = {"error": str(exc)[:500]}
            rows = measure(servers, script, levels, seconds, args.rounds)
        rows[LIMIT] = in_process(model_dir, record, levels, seconds * args.rounds)
        rows.update(failed)
        rows = {k: rows[k] for k in ORDER if k in rows}
        results["models"][name] = rows
        results.setdefault("load_average", {})[name] = os.getloadavg()
        print_table(name, rows, levels)
        print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if peers_problem:
        print(f"\npeers not run: {peers_problem}")
        results["peers_problem"] = peers_problem
    (OUT / "serve.json").write_text(json.dumps(results, indent=2))


def print_table(name: str, rows: dict, levels: list[int]) -> None:
    head = "".join(f" | c={c}: req/s  p50  p99 (ms) req/CPU-s" for c in levels)
    print(f"\n{name}\n{'server':<24}{head}")
    for label, cells in rows.items():
        if "error" in cells:
            print(f"{label:<24} | failed: {cells['error'][:80]}")
            continue
        line = "".join(
            f" | {cells[c]['rps']:>10.0f} {cells[c]['p50_ms']:6.2f} {cells[c]['p99_ms']:7.2f}"
            f" {cells[c].get('rps_per_cpu_s', float('nan')):>9.0f}"
            for c in levels
        )
        print(f"{label:<24}{line}")
    limit, ours_on = rows.get(LIMIT), rows.get(OURS_ON)
    if limit and ours_on and "error" not in ours_on:
        line = "".join(
            f" | c={c}: {ours_on[c]['rps'] / limit[c]['rps']:5.2f} "
            f"{ours_on[c]['rps_per_cpu_s'] / limit[c]['rps_per_cpu_s']:5.2f}"
            for c in levels
        )
        print(f"\n{OURS_ON} as a fraction of the {LIMIT} (req/s, req/CPU-s){line}")
    base = rows.get(CEILING)
    if not base or "error" in base:
        return
    print(f"\nas a fraction of the {CEILING} (req/s, req/CPU-s; p99 as a multiple)")
    for label, cells in rows.items():
        if label in (CEILING, LIMIT) or "error" in cells:
            continue
        line = "".join(
            f" | c={c}: {cells[c]['rps'] / base[c]['rps']:5.2f} "
            f"{cells[c]['rps_per_cpu_s'] / base[c]['rps_per_cpu_s']:5.2f} "
            f"{cells[c]['p99_ms'] / base[c]['p99_ms']:5.2f}x"
            for c in levels
        )
        print(f"{label:<24}{line}")


if __name__ == "__main__":
    main()
