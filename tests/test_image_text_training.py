"""The image and text tasks on the harness: reading channels, a 2-process torchrun run,
kill-then-resume and SIGTERM, as for tabular."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_train import (
    REPO,
    start_training,
    step_of,
    subprocess_env,
    train_args,
    wait_for_checkpoint,
)
from tests.vision_nlp_support import hp_args, tiny_data
from workloads.training.artifact import load_model
from workloads.training.contract import ContractError, parse_hyperparameters
from workloads.training.harness import main
from workloads.training.tasks.text.tokens import train_tokenizer

TASKS = ["image", "text"]


@pytest.mark.parametrize("task", TASKS)
def test_torchrun_two_processes(tmp_path, task):
    data = tiny_data(task, tmp_path / "data")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "workloads.train", *train_args(tmp_path, data, *hp_args(task, "epochs=2"))]
    done = subprocess.run(
        command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["world_size"] == 2 and report["task"] == task and report["epochs"] == 2
    # each rank takes half of every epoch, 8 a batch
    assert report["steps"] == 2 * math.ceil(math.ceil(report["train_rows"] / 2) / 8)
    predictor = load_model(tmp_path / "model")
    assert set(predictor.classes) == set(report_classes(task))


def report_classes(task: str) -> list[str]:
    if task == "image":
        return ["ok", "scratch", "pit", "crack"]
    return ["billing", "technical", "account", "shipping", "cancellation"]


@pytest.mark.parametrize("task", TASKS)
def test_killed_run_resumes_from_its_checkpoint(tmp_path, task):
    data = tiny_data(task, tmp_path / "data")
    extra = hp_args(task, "epochs=3", "patience=100", "checkpoint_steps=5")
    proc = start_training(tmp_path, data, *extra)
    wait_for_checkpoint(tmp_path / "ckpt", proc, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not (tmp_path / "model").exists()
    saved = max(step_of(p) for p in (tmp_path / "ckpt").glob("ckpt-*.pt"))

    again = start_training(tmp_path, data, *extra)
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0, err[-3000:]
    assert f"resumed from checkpoint at step {saved}" in err
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["resumed_from_step"] == saved > 0
    assert report["steps"] == 3 * math.ceil(report["train_rows"] / 8)  # the epoch was finished
    assert load_model(tmp_path / "model").classes == sorted(report_classes(task))


@pytest.mark.parametrize("task", TASKS)
def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path, task):
    data = tiny_data(task, tmp_path / "data")
    extra = hp_args(task, "epochs=1000", "patience=1000", "checkpoint_steps=100000")
    proc = start_training(tmp_path, data, *extra)
    deadline = time.monotonic() + 120
    while "training:" not in (line := proc.stderr.readline()):
        assert line and time.monotonic() < deadline, "training did not start"
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    checkpoints = list((tmp_path / "ckpt").glob("ckpt-*.pt"))
    assert len(checkpoints) == 1 and step_of(checkpoints[0]) > 0
    assert not (tmp_path / "model").exists()


# --- reading channels and params --------------------------------------------------------


def run_main(tmp_path: Path, data: Path, *extra: str) -> int:
    return main(train_args(tmp_path, data, *extra), env={})


def test_image_channel_errors_name_the_folder(tmp_path):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "cats" / "notes.txt").write_text("x")
    assert run_main(tmp_path, tmp_path / "empty", "--hp", "task=image") == 1
    failure = (tmp_path / "failure").read_text()
    assert "no class folders with .png, .jpg, .jpeg files" in failure and "empty" in failure

    one = tmp_path / "one" / "cats"
    one.mkdir(parents=True)
    for i in range(6):
        Image.new("L", (8, 8), i * 20).save(one / f"{i}.png")
    assert run_main(tmp_path, tmp_path / "one", "--hp", "task=image") == 1
    assert "single class ('cats')" in (tmp_path / "failure").read_text()

    broken = tmp_path / "broken"
    data = tiny_data("image", broken, rows=24)
    (data / "ok" / "000000.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert run_main(tmp_path, data, "--hp", "task=image", "--hp", "image_size=16") == 1
    failure = (tmp_path / "failure").read_text()
    assert "000000.png" in failure and "cannot read the image" in failure


def test_text_channel_errors_name_the_column(tmp_path):
    data = tiny_data("text", tmp_path, rows=40)
    assert run_main(tmp_path, data, "--hp", "task=text", "--hp", "target=label") == 1
    failure = (tmp_path / "failure").read_text()
    assert "column(s) ['label'] not found" in failure and "category" in failure
    frame = json.dumps({"text": 3, "category": "billing"})
    (tmp_path / "bad.jsonl").write_text(frame + "\n")
    bad = tmp_path / "bad.jsonl"
    assert run_main(tmp_path, bad, "--hp", "task=text", "--hp", "target=category") == 1
    assert "row 0 is not a text (3, int)" in (tmp_path / "failure").read_text()


def test_params_are_checked():
    with pytest.raises(ContractError, match=r"dim \(30\) must be a multiple of heads \(4\)"):
        parse_hyperparameters({"task": "text", "target": "y", "dim": "30"}, "SM_HPS")
    with pytest.raises(ContractError, match="hyperparameter 'image_size'"):
        parse_hyperparameters({"task": "image", "image_size": "2"}, "SM_HPS")
    hp = parse_hyperparameters({"task": "image"}, "SM_HPS")
    assert hp.params.image_size == 64 and hp.settings.learning_rate == 2e-3


def test_the_tokenizer_is_deterministic():
    texts = [f"ticket {i} about my order number {i * 7} and the invoice" for i in range(300)]
    one = train_tokenizer(texts, 200, 2, True).get_vocab()
    two = train_tokenizer(list(texts), 200, 2, True).get_vocab()
    assert one == two and one["[PAD]"] == 0 and one["[UNK]"] == 1


def test_jsonl_text_channel_trains(tmp_path):
    data = tiny_data("text", tmp_path, rows=80)
    frame = __import__("pandas").read_csv(data)
    jsonl = tmp_path / "tickets.jsonl"
    frame.to_json(jsonl, orient="records", lines=True)
    code = run_main(tmp_path, jsonl, *hp_args("text", "epochs=1", "model=transformer"))
    assert code == 0, (tmp_path / "failure").read_text() if (tmp_path / "failure").exists() else ""
    predictor = load_model(tmp_path / "model")
    out = predictor.predict_matrix(predictor.prepare_records([{"text": "refund my card"}]))
    assert abs(sum(out[0]["probabilities"].values()) - 1) < 1e-5
    assert np.isfinite(list(out[0]["probabilities"].values())).all()


def test_bag_ngrams_and_idf_are_fitted_on_the_training_texts():
    from sklearn.feature_extraction.text import TfidfVectorizer

    from workloads.training.tasks.text import fit_ngrams
    from workloads.training.tasks.text.model import TextBag

    ids = np.array([[5, 6, 7, 0], [5, 6, 0, 0], [7, 5, 6, 0], [8, 0, 0, 0]])
    keys, idf = fit_ngrams(ids, vocab=10, min_frequency=2, max_bigrams=10)
    assert keys.tolist() == [56]  # "5 6" in three texts; "6 7" and "7 5" in one each
    docs = [" ".join(f"t{i}" for i in row if i) + " b56" * ("5 6" in " ".join(map(str, row)))
            for row in ids.tolist()]  # fmt: skip
    sk = TfidfVectorizer(token_pattern=r"\S+").fit(docs)
    expected = dict(zip(sk.get_feature_names_out(), sk.idf_, strict=True))
    assert idf[0] == 0 and np.allclose(idf[[5, 6, 7, 8]], [expected[f"t{i}"] for i in (5, 6, 7, 8)])
    assert np.isclose(idf[10], expected["b56"])  # the first bigram comes after the vocabulary
    net = TextBag(10, 2, 4, 0.0, len(keys))
    net.gram_keys.copy_(torch.from_numpy(keys))
    feats = net.features(torch.tensor([[5, 6, 7, 0], [6, 5, 0, 0]]))
    assert feats.tolist() == [[5, 6, 7, 0, 10, 0, 0], [6, 5, 0, 0, 0, 0, 0]]
