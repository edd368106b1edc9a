"""Batch scoring with a model trained by workloads.train, on real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pandas as pd
import pytest

from tests.serve_support import ROOT, make_frame, train_model
from workloads.serving.batch import BatchError, score
from workloads.training.artifact import load_model
from workloads.training.data import DataError


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_model(tmp_path_factory.mktemp("batch-clf"), make_frame(300), "label")


@pytest.fixture(scope="module")
def regressor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_model(tmp_path_factory.mktemp("batch-reg"), make_frame(300), "age")


def as_records(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    part = frame[columns].astype(object)
    return part.where(part.notna(), None).to_dict("records")


def run_batch(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "workloads.serving.batch", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_csv_file_to_csv_matches_predictor(classifier: Path, tmp_path: Path) -> None:
    frame = make_frame(50, seed=3).assign(customer="c" + pd.Series(range(50)).astype(str))
    frame.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out" / "scored.csv"
    done = run_batch(str(tmp_path / "in.csv"), str(out), "--model-dir", str(classifier))
    assert done.returncode == 0, done.stderr
    assert "scored 50 rows" in done.stdout
    scored = pd.read_csv(out)
    # Every input column is kept (ids, even the label), predictions are added.
    assert list(scored.columns) == [
        *frame.columns,
        "prediction",
        "probability_no",
        "probability_yes",
    ]
    assert scored["customer"].tolist() == frame["customer"].tolist()
    predictor = load_model(classifier)
    want = predictor.predict_records(as_records(frame, predictor.feature_columns))
    assert scored["prediction"].tolist() == [w["label"] for w in want]
    for cls in ("no", "yes"):
        expected = [w["probabilities"][cls] for w in want]
        assert scored[f"probability_{cls}"].tolist() == pytest.approx(expected, abs=1e-6)


def test_folder_of_csv_and_parquet_to_parquet_in_chunks(classifier: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    a, b = make_frame(30, seed=4), make_frame(25, seed=5)
    a.to_csv(folder / "a.csv", index=False)
    b.to_parquet(folder / "b.parquet", index=False)
    out = tmp_path / "scored.parquet"
    assert score(folder, out, classifier, chunk_size=7) == 55
    scored = pd.read_parquet(out)
    assert len(scored) == 55
    predictor = load_model(classifier)
    both = pd.concat([a, b], ignore_index=True)
    want = predictor.predict_records(as_records(both, predictor.feature_columns))
    assert scored["prediction"].tolist() == [w["label"] for w in want]
    assert scored["probability_yes"].tolist() == pytest.approx(
        [w["probabilities"]["yes"] for w in want], abs=1e-6
    )


def test_regression_to_jsonl(regressor: Path, tmp_path: Path) -> None:
    frame = make_frame(20, seed=6).drop(columns=["age"])
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    out = tmp_path / "scored.jsonl"
    assert score(f"file://{tmp_path / 'in.parquet'}", out, regressor) == 20
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    predictor = load_model(regressor)
    want = predictor.predict_records(as_records(frame, predictor.feature_columns))
    assert [r["prediction"] for r in lines] == pytest.approx(want, abs=1e-6)
    assert all(isinstance(r["prediction"], float) for r in lines)
    assert lines[0]["plan"] == frame["plan"].iloc[0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["plan"]), "missing feature column(s) plan"),
        (lambda f: f.assign(visits=["many"] * len(f)), "'visits' expects a number"),
        (lambda f: f.assign(age=[1e308] * len(f)), "column 'age' value 1e+308 is out of range"),
        (lambda f: f.assign(prediction=1), "already has output column"),
    ],
    ids=["missing-column", "bad-value", "beyond-float32", "output-clash"],
)
def test_bad_input_fails_and_keeps_old_output(
    classifier: Path, tmp_path: Path, mutate, message: str
) -> None:
    mutate(make_frame(10, seed=7)).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "scored.csv"
    out.write_text("previous run\n")
    with pytest.raises(BatchError) as failure:
        score(tmp_path / "in.csv", out, classifier)
    assert message in str(failure.value) and "in.csv" in str(failure.value)
    assert out.read_text() == "previous run\n"  # never replaced by a partial file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "scored.csv"]


def test_unusable_paths_are_named(classifier: Path, tmp_path: Path) -> None:
    make_frame(5).to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(BatchError, match="unsupported output type"):
        score(tmp_path / "in.csv", tmp_path / "out.xlsx", classifier)
    done = run_batch(
        str(tmp_path / "nope"), str(tmp_path / "o.csv"), "--model-dir", str(classifier)
    )
    assert done.returncode == 2 and "does not exist" in done.stderr
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        score(tmp_path / "empty.csv", tmp_path / "o.csv", classifier)
    with pytest.raises(FileNotFoundError, match="not a model artifact"):
        score(tmp_path / "in.csv", tmp_path / "o.csv", tmp_path)
