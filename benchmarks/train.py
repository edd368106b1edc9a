"""Training throughput: the real pipeline against a pure compute loop.

    .venv/bin/python benchmarks/train.py [--task tabular|image|text] [--rows 100000]
        [--epochs 3] [--repeats 3] [--amp on|off]

The pipeline is `workloads.train.main` on a synthetic Parquet file (numeric columns with
missing values, categorical columns): its `samples_per_second` covers the whole training loop
(DistributedSampler shuffling, batch gathering, loss bookkeeping, per-epoch validation,
early-stopping state, checkpoints every `checkpoint_steps`). The compute loop trains the same
network with the same optimizer, loss and batch size on tensors already in memory, slicing
contiguous batches and doing nothing else. Overhead = 1 - pipeline / compute; target < 15%.

`--task image` trains the image task on the `defects` generator (`--image-size`, PNG files
decoded by the task: the pipeline includes decoding, normalisation and augmentation) and
`--task text` the text task on the `tickets` generator (`--model auto|transformer|bag`: the
pipeline includes tokenizer training and encoding; `--model auto`, the default, is what the
task picks for the data size); the image compute loop trains the task's own network on
random inputs of the same shape already on the device, the text one on the training texts
encoded beforehand by the run's own tokenizer (the same padding and, for the bag, the same
n-grams). On CUDA (when a GPU is
lent) both loops run with or without mixed precision (`--amp`).
Medians over the repeats, run alternately so background load hits both alike. Both wall
time and this process's CPU time are measured: on a shared machine other processes' load
inflates wall time at random, while CPU time counts only the work the loop itself did.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workloads.local.defects import write_defects  # noqa: E402
from workloads.local.tickets import generate_tickets  # noqa: E402
from workloads.training.artifact import load_model  # noqa: E402
from workloads.training.harness import main as train_main  # noqa: E402
from workloads.training.tasks.tabular import TabularNet  # noqa: E402
from workloads.training.tasks.text.tokens import encode  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_dataset(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, 16))
    frame = pd.DataFrame(numeric, columns=[f"x{i}" for i in range(16)])
    for column in ("c0", "c1"):
        frame[column] = rng.choice([f"v{i}" for i in range(10)], size=rows)
    logit = numeric[:, :4].sum(axis=1) + (frame["c0"] == "v3") - 0.5
    frame["label"] = (logit + rng.normal(size=rows) > 0).astype(int)
    mask = rng.random((rows, 16)) < 0.05
    frame[frame.columns[:16]] = frame[frame.columns[:16]].mask(mask)
    frame.to_parquet(path)


def make_task_data(work: Path, args: argparse.Namespace) -> tuple[Path, list[str]]:
    """The channel and the task's hyperparameters for `--task`."""
    if args.task == "tabular":
        data = work / "train.parquet"
        make_dataset(data, args.rows)
        return data, ["--target", "label", "--hp", "hidden_sizes=128,64"]
    if args.task == "image":
        data = write_defects(work / "images", args.rows, size=args.image_size)
        hp = ["task=image", f"image_size={args.image_size}", "width=16", "stages=3"]
    else:
        data = work / "tickets.csv"
        generate_tickets(args.rows).to_csv(data, index=False)
        hp = ["task=text", "target=category", f"model={args.model}", "dim=64", "heads=4"]
    return data, [a for item in hp for a in ("--hp", item)]


def run_pipeline(
    work: Path, data: Path, task_args: list[str], args: argparse.Namespace
) -> tuple[float, float, float, Path]:
    run = work / f"run-{time.monotonic_ns()}"
    argv = [
        "--train", str(data),
        "--model-dir", str(run / "model"),
        "--output-data-dir", str(run / "out"),
        "--checkpoint-dir", str(run / "ckpt"),
        "--failure-file", str(run / "failure"),
        *task_args,
        "--hp", f"epochs={args.epochs}",
        "--hp", f"batch_size={args.batch_size}",
        "--hp", f"amp={args.amp}",
        "--hp", "patience=1000",
        "--hp", "validation_fraction=0.1",
        "--hp", f"checkpoint_steps={args.checkpoint_steps}",
    ]  # fmt: skip
    started = time.perf_counter()
    if train_main(argv, env={}) != 0:
        raise SystemExit((run / "failure").read_text())
    wall = time.perf_counter() - started
    report = json.loads((run / "out" / "metrics.json").read_text())
    samples = report["samples_per_second"] * report["train_seconds"]
    return (
        report["samples_per_second"],
        samples / report["train_cpu_seconds"],
        report["train_rows"] * args.epochs / wall,
        run / "model",
    )


def compute_inputs(
    model_dir: Path, rows: int, task: str, data: Path
) -> tuple[nn.Module, torch.Tensor, int]:
    """The trained task's network and inputs of its input shape (text: the training texts
    encoded by its tokenizer; else random)."""
    meta = json.loads((model_dir / "meta.json").read_text())
    if task == "tabular":
        return TabularNet(meta["in_dim"], 2, [128, 64], 0.1), torch.randn(rows, meta["in_dim"]), 2
    predictor = load_model(model_dir)
    classes = len(predictor.classes)
    if task == "image":
        channels = 1 if predictor.mode == "L" else 3
        x = torch.randn(rows, channels, predictor.size, predictor.size)
    else:
        texts = pd.read_csv(data)["text"].tolist()[:rows]
        x = torch.from_numpy(encode(predictor.tok, texts, predictor.max_length))
    return predictor.net, x, classes


def run_compute(
    model_dir: Path, rows: int, args: argparse.Namespace, data: Path
) -> tuple[float, float]:
    """The same network, optimizer, loss, batch size, device and precision on pre-loaded
    tensors: nothing else."""
    torch.manual_seed(0)
    net, x, classes = compute_inputs(model_dir, rows, args.task, data)
    rows = len(x)
    x, y = x.to(DEVICE), torch.randint(0, classes, (rows,), device=DEVICE)
    net = net.to(DEVICE).train()
    if DEVICE.type == "cuda" and x.dim() == 4:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    amp = DEVICE.type == "cuda" and args.amp == "on"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(args.epochs):
        for i in range(0, rows, args.batch_size):
            with torch.autocast(DEVICE.type, dtype=dtype, enabled=amp):
                loss = loss_fn(net(x[i : i + args.batch_size]), y[i : i + args.batch_size])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    samples = rows * args.epochs
    return samples / (time.perf_counter() - started), samples / (time.process_time() - cpu_started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["tabular", "image", "text"], default="tabular")
    parser.add_argument("--rows", type=int, default=None, help="default 100000 (4000 image)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--model", choices=["auto", "transformer", "bag"], default="auto")
    parser.add_argument("--amp", choices=["on", "off"], default="on", help="on CUDA only")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--checkpoint-steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    if args.rows is None:
        args.rows = {"image": 4000, "text": 20_000}.get(args.task, 100_000)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        data, task_args = make_task_data(work, args)
        train_rows = args.rows - round(0.1 * args.rows)
        runs: dict[str, list[float]] = {k: [] for k in ("wall", "cpu", "e2e", "cwall", "ccpu")}
        for _ in range(args.repeats):
            wall, cpu, e2e, model_dir = run_pipeline(work, data, task_args, args)
            cwall, ccpu = run_compute(model_dir, train_rows, args, data)
            for key, value in zip(runs, (wall, cpu, e2e, cwall, ccpu), strict=True):
                runs[key].append(value)

    med = {k: statistics.median(v) for k, v in runs.items()}
    print(
        f"task={args.task} rows={args.rows} (train {train_rows}) epochs={args.epochs} "
        f"batch={args.batch_size} threads={args.threads} repeats={args.repeats} "
        f"device={DEVICE.type} amp={args.amp if DEVICE.type == 'cuda' else 'n/a'} "
        f"torch={torch.__version__}"
    )
    print("samples/s (median)              wall time      CPU time")
    print(f"pipeline (training loop)     {med['wall']:12,.0f}  {med['cpu']:12,.0f}")
    print(f"pure compute loop            {med['cwall']:12,.0f}  {med['ccpu']:12,.0f}")
    print(f"pipeline end to end (+ load, preprocessing, artifact, wall) {med['e2e']:,.0f}")
    wall_overhead = 100 * (1 - med["wall"] / med["cwall"])
    cpu_overhead = 100 * (1 - med["cpu"] / med["ccpu"])
    verdict = "OK" if cpu_overhead < 15 else "ABOVE TARGET"
    print(f"data pipeline overhead        wall {wall_overhead:5.1f} %   CPU {cpu_overhead:5.1f} %")
    print(f"target < 15% (CPU time): {verdict}")
    for key, label in (("wall", "pipeline wall"), ("cwall", "compute wall")):
        print(f"  runs {label}: {_fmt(runs[key])}")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


if __name__ == "__main__":
    main()
