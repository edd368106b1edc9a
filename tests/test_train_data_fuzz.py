"""Fault and fuzz probes of the tabular training and prediction inputs.

The contract: training on any data file ends either with exit 0 and a loadable artifact, or
with the failure exit and a message that starts `data error:` (or `configuration error:`)
and names the file and the column; never the catch-all `training failed: SomeException`.
`Predictor.predict_records` on any records returns predictions or raises `InputError`, and
the real server answers them with a 4xx JSON error, never a 500, and keeps serving.

An explicit table of odd files, then bounded, derandomized Hypothesis fuzzing of generated
frames and records (`fuzz_support.fuzz_settings`, `conftest.fixed_constant_pool`). Every
training run is one or two epochs of a tiny network, in process.
"""

from __future__ import annotations

import decimal
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz_support import fuzz_settings, train_in
from tests.test_train import one_thread  # noqa: F401  (the fixture)
from workloads.training.artifact import load_model
from workloads.training.contract import failure_file_hint
from workloads.training.tasks.base import InputError

pytestmark = pytest.mark.usefixtures("fixed_constant_pool", "one_thread")  # conftest, test_train

ROOT = Path(__file__).resolve().parents[1]
ROWS = 24
LABELS = [i % 2 for i in range(ROWS)]
NUMBERS = [float(i) for i in range(ROWS)]


def train(
    root: Path, data: Path, validation: Path | None = None, hp: str = "epochs=1"
) -> tuple[int, str]:
    """`harness.main` on `data`: the exit code and the failure file's text ("" if none)."""
    args = ["--train", str(data), "--target", "target", "--hp", "epochs=1", "--hp", hp]
    args += ["--hp", "hidden_sizes=4", "--hp", "batch_size=8"]
    if validation is not None:
        args += ["--validation", str(validation)]
    return train_in(root, args)


def assert_contract(root: Path, rc: int, failure: str) -> None:
    """Exit 0 with a loadable artifact, or a data/configuration error (not the catch-all)."""
    if rc == 0:
        assert load_model(root / "model").feature_columns
        return
    assert failure.startswith(("data error:", "configuration error:")), failure
    assert not (root / "model").exists()


# --- the explicit table ------------------------------------------------------------------

Writer = Callable[[Path], Path]


def csv_text(text: str | bytes, name: str = "train.csv") -> Writer:
    def write(root: Path) -> Path:
        path = root / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    return write


def frame_file(frame: pd.DataFrame, name: str = "train.csv") -> Writer:
    def write(root: Path) -> Path:
        path = root / name
        if name.endswith(".csv"):
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path)
        return path

    return write


def arrow_file(columns: dict[str, Any], names: list[str] | None = None) -> Writer:
    def write(root: Path) -> Path:
        path = root / "train.parquet"
        table = pa.table(columns)
        pq.write_table(table.rename_columns(names) if names else table, path)
        return path

    return write


def jsonl_file(rows: list[dict]) -> Writer:
    def write(root: Path) -> Path:
        path = root / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    return write


def with_feature(values: list, name: str = "train.csv") -> Writer:
    return frame_file(pd.DataFrame({"a": NUMBERS, "c": values, "target": LABELS}), name)


def with_labels(values: list) -> Writer:
    return jsonl_file([{"a": i, "target": v} for i, v in enumerate(values)])


def lines(header: str, row: Callable[[int], str], n: int = ROWS) -> str:
    return header + "\n" + "".join(row(i) + "\n" for i in range(n))


def mixed_folder(root: Path) -> Path:
    folder = root / "channel"
    folder.mkdir()
    frame = pd.DataFrame({"a": NUMBERS, "c": ["x", "y"] * (ROWS // 2), "target": LABELS})
    frame.to_csv(folder / "part-1.csv", index=False)
    frame.assign(c=1.5).to_parquet(folder / "part-2.parquet")
    return folder


OK = "ok"
CASES: dict[str, tuple[Writer, str]] = {
    # (the train file, "ok" or what the data error must say)
    "empty file": (csv_text(""), "file is empty"),
    "header only": (csv_text("a,target\n"), "no rows"),
    "a single row": (csv_text("a,target\n1,0\n"), "1 rows are too few"),
    "no target column": (csv_text(lines("a,b", lambda i: f"{i},1")), "'target' not found"),
    "target all NaN": (csv_text(lines("a,target", lambda i: f"{i},")), "has no values"),
    "a single class": (
        csv_text(lines("a,target", lambda i: f"{i},7")),
        "train.csv: target column 'target': the label has a single class (7)",
    ),
    "a class with one row": (
        frame_file(pd.DataFrame({"a": NUMBERS, "target": [0] * 12 + [1] * 11 + [2]})),
        OK,
    ),
    "NaN in a feature": (with_feature([np.nan] * ROWS), OK),
    "inf in a feature": (
        with_feature([np.inf] + NUMBERS[1:]),
        "train.csv: column 'c' has a non-finite number inf in row ",
    ),
    "-inf in a parquet feature": (
        with_feature([1.0] * (ROWS - 1) + [-np.inf], "train.parquet"),
        "train.parquet: column 'c' has a non-finite number -inf in row ",
    ),
    "numbers and strings in a column": (with_feature([1, "x"] * (ROWS // 2)), OK),
    "a constant column": (with_feature([7] * ROWS), OK),
    "thousands of categories": (
        frame_file(pd.DataFrame({"c": [f"v{i}" for i in range(3000)], "target": [0, 1] * 1500})),
        OK,
    ),
    "very long strings": (with_feature(["x" * 100_000, "y"] * (ROWS // 2)), OK),
    "unicode column names": (
        frame_file(pd.DataFrame({"é ü": NUMBERS, "日本\t": ["☃", "ä"] * 12, "target": LABELS})),
        OK,
    ),
    "an empty column name": (csv_text(lines(",target", lambda i: f"{i},{i % 2}")), OK),
    "duplicate column names": (
        csv_text(lines("a,a,target", lambda i: f"{i},1,{i % 2}")),
        "train.csv: column names ['a'] appear more than once in the header",
    ),
    "a repeated target column": (
        csv_text(lines("a,target,target", lambda i: f"{i},{i % 2},{i % 2}")),
        "train.csv: column names ['target'] appear more than once",
    ),
    "a Parquet schema that repeats a name": (
        arrow_file({"a": NUMBERS, "target": LABELS}, names=["target", "target"]),
        "train.parquet: column names ['target'] appear more than once in the schema",
    ),
    "a name like pandas' renaming": (
        csv_text(lines("a,a.1,target", lambda i: f"{i},1,{i % 2}")),
        OK,
    ),
    "a newline in a column name": (csv_text(lines('"a\nb",target', lambda i: f"{i},{i % 2}")), OK),
    "a boolean column": (with_feature([True, False] * (ROWS // 2), "train.parquet"), OK),
    "a nullable boolean column": (
        with_feature(pd.array([True, None] * (ROWS // 2), dtype="boolean"), "train.parquet"),
        OK,
    ),
    "a datetime column": (with_feature(pd.date_range("2020", periods=ROWS), "train.parquet"), OK),
    "a float target with few values": (
        frame_file(pd.DataFrame({"a": NUMBERS, "target": [0.5, 1.5, 2.5] * (ROWS // 3)})),
        OK,
    ),
    "a huge integer": (
        csv_text(lines("a,target", lambda i: f"{10**30 if i == 0 else i},{i % 2}")),
        OK,
    ),
    "a number too large for float32 once standardised": (
        csv_text(lines("a,target", lambda i: f"{1e300 * (1 + i % 2)},{i % 2}")),
        "train.csv: row ",
    ),
    "non-UTF-8 bytes": (
        csv_text(lines("a,c,target", lambda i: f"{i},caf\xe9,{i % 2}").encode("latin-1")),
        "train.csv: cannot read file (UnicodeDecodeError",
    ),
    "not a CSV at all": (csv_text(b"\x89PNG\r\n\x1a\n\x00\xff" * 50), "cannot read file"),
    "a ragged CSV": (csv_text("a,target\n1,0\n2,1,3\n"), "Expected 2 fields in line 3"),
    "a folder of CSV and Parquet": (mixed_folder, OK),
    "bytes that are not UTF-8 in parquet": (
        arrow_file({"a": NUMBERS, "c": pa.array([b"\xff\x00"] * ROWS), "target": LABELS}),
        "train.parquet: column 'c' holds bytes that are not UTF-8 text",
    ),
    "labels mixing numbers and strings": (
        with_labels([1, "x"] * (ROWS // 2)),
        "train.jsonl: target column 'target' mixes numbers and strings (row 0 is 1, row 1 is",
    ),
    "labels mixing booleans and numbers": (
        with_labels([True, 1, 0, 2, False] * 5),
        "train.jsonl: target column 'target' mixes booleans and numbers",
    ),
    "list labels": (
        with_labels([[i % 2] for i in range(ROWS)]),
        "train.jsonl: target column 'target' has a list value [0] in row 0",
    ),
    "object labels": (
        with_labels([{"v": i % 2} for i in range(ROWS)]),
        "train.jsonl: target column 'target' has a dict value",
    ),
    "datetime labels": (
        arrow_file({"a": NUMBERS, "target": pa.array(pd.date_range("2020", periods=ROWS))}),
        "train.parquet: target column 'target' has datetime64",
    ),
    "decimal labels": (
        arrow_file({"a": NUMBERS, "target": [decimal.Decimal(i % 2) for i in range(ROWS)]}),
        "train.parquet: target column 'target' has a Decimal value",
    ),
    "a constant regression label": (
        frame_file(pd.DataFrame({"a": NUMBERS, "target": [0.5] * ROWS})),
        "train.csv: target column 'target': the regression label is constant",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_odd_training_files(tmp_path, case, capsys):
    write, expected = CASES[case]
    rc, failure = train(tmp_path, write(tmp_path))
    assert_contract(tmp_path, rc, failure)
    if expected == OK:
        assert rc == 0, failure
    else:
        assert rc != 0 and expected in failure, failure
        assert failure.startswith("data error:")
        assert "Traceback" not in capsys.readouterr().err


TRAIN = pd.DataFrame(
    {"a": NUMBERS, "b": ["x", "y", "z"] * (ROWS // 3), "target": [0, 1, 1, 0] * (ROWS // 4)}
)
VALIDATION_CASES: dict[str, tuple[pd.DataFrame, str]] = {
    "a column missing": (TRAIN.drop(columns="a"), "columns ['b'] differ from the train"),
    "an extra column": (TRAIN.assign(z=1), "columns ['a', 'b', 'z'] differ"),
    "columns reordered": (TRAIN[["b", "a", "target"]], "columns ['b', 'a'] differ"),
    "an unseen category": (TRAIN.assign(b="never"), OK),
    "an unseen class": (TRAIN.assign(target=7), "have classes [0, 1, 7]"),
    "no target": (TRAIN.drop(columns="target"), "val.csv: target column 'target' not found"),
    "strings in a numeric column": (
        TRAIN.assign(a=["unknown"] + NUMBERS[1:]),
        "val.csv: column 'a' expects numbers, got 'unknown' in row 0",
    ),
    "inf in a numeric column": (
        TRAIN.assign(a=NUMBERS[:-1] + [np.inf]),
        f"val.csv: column 'a' has a non-finite number inf in row {ROWS - 1}",
    ),
    "boolean labels where train has numbers": (
        TRAIN.assign(target=[True, False] * (ROWS // 2)),
        "val.csv: target column 'target' has booleans where the train channel's are numbers",
    ),
    "string labels where train has numbers": (
        TRAIN.assign(target=["no", "yes"] * (ROWS // 2)),
        "val.csv: target column 'target' has strings where the train channel's are numbers",
    ),
}


@pytest.mark.parametrize("case", list(VALIDATION_CASES))
def test_odd_validation_files(tmp_path, case):
    frame, expected = VALIDATION_CASES[case]
    TRAIN.to_csv(tmp_path / "train.csv", index=False)
    frame.to_csv(tmp_path / "val.csv", index=False)
    rc, failure = train(tmp_path, tmp_path / "train.csv", tmp_path / "val.csv")
    assert_contract(tmp_path, rc, failure)
    if expected == OK:
        assert rc == 0, failure
    else:
        assert rc != 0 and expected in failure, failure


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["x"] * ROWS, "val.csv: target column 'target' has strings where"),
        ([np.inf] * ROWS, "val.csv: target column 'target' has non-finite values"),
        ([1e300] * ROWS, "val.csv: target column 'target' value 1e+300 in row 0 is out of range"),
    ],
)
def test_odd_regression_validation_labels(tmp_path, labels, expected):
    frame = pd.DataFrame({"a": NUMBERS, "target": np.linspace(0, 1, ROWS)})
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.assign(target=labels).to_csv(tmp_path / "val.csv", index=False)
    rc, failure = train(tmp_path, tmp_path / "train.csv", tmp_path / "val.csv")
    assert rc != 0 and expected in failure, failure


@pytest.mark.parametrize("size", [1e300, 1e-300])
def test_regression_labels_near_the_float64_limits(tmp_path, size):
    """The label's mean and scale, and the metrics, do not overflow or underflow: the model
    predicts in the label's units (it used to predict inf for 1e300, and ~1 for 1e-300)."""
    frame = pd.DataFrame({"a": NUMBERS, "target": np.linspace(1, 2, ROWS) * size})
    frame.to_csv(tmp_path / "train.csv", index=False)
    rc, failure = train(tmp_path, tmp_path / "train.csv")
    assert rc == 0, failure
    model = load_model(tmp_path / "model")
    assert all(math.isfinite(v) for v in model.metrics.values()), model.metrics
    assert 0 < model.metrics["rmse"] < size
    [prediction] = model.predict_records([{"a": 3.0}])
    assert abs(prediction) < 10 * size


@pytest.mark.parametrize(
    "case", ["inf in a feature", "list labels", "bytes that are not UTF-8 in parquet"]
)
def test_the_command_reports_a_data_error_without_a_traceback(tmp_path, case):
    """End to end through `python -m workloads.train`: exit 1, the reason as the last line
    of stderr and in the failure file."""
    write, expected = CASES[case]
    args = ["--train", str(write(tmp_path)), "--target", "target", "--hp", "epochs=1"]
    args += ["--model-dir", str(tmp_path / "model"), "--failure-file", str(tmp_path / "failure")]
    args += ["--output-data-dir", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "c")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "MLINFRA_"))}
    done = subprocess.run(
        [sys.executable, "-m", "workloads.train", *args],
        cwd=ROOT,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("data error:") and expected in last, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert (tmp_path / "failure").read_text().strip() == last


def test_the_failure_file_flag_is_read_from_the_command_line(monkeypatch, tmp_path):
    """`main()` from the console script passes argv None: the failure reason went to
    /opt/ml/output/failure instead of the `--failure-file` given on the command line."""
    monkeypatch.setattr(sys, "argv", ["train", "--failure-file", str(tmp_path / "f")])
    assert failure_file_hint(None, {}) == tmp_path / "f"


@pytest.mark.parametrize("channel", ["train", "validation"])
def test_an_infinite_class_label_is_a_data_error(tmp_path, channel):
    """A classifier forced on float labels: inf was a class, saved in meta.json as the
    non-JSON token Infinity."""
    labels = {"train": [0.0, 1.0, np.inf] * 8, "validation": [0.0, 1.0] * 12}
    if channel == "validation":
        labels = {"train": labels["validation"], "validation": [0.0, 1.0, -np.inf] * 8}
    for name, values in labels.items():
        pd.DataFrame({"a": NUMBERS, "target": values}).to_csv(tmp_path / f"{name}.csv", index=False)
    files = [tmp_path / "train.csv", tmp_path / "validation.csv"]
    rc, failure = train(tmp_path / "run", *files, hp="problem=multiclass")
    where = f"data error: {files[channel == 'validation']}: target column 'target'"
    assert rc == 1 and failure.startswith(where) and "inf" in failure, failure


@pytest.mark.parametrize(
    ("hp", "expected"),
    [
        (
            "validation_fraction=0.99",
            "data error: {train}: validation_fraction 0.99 of 24 rows leaves 0 to train on",
        ),
        (
            "problem=rank",
            "configuration error: the command line: hyperparameter 'problem': Input should be",
        ),
    ],
)
def test_hyperparameters_the_data_cannot_meet(tmp_path, hp, expected):
    """The message names the setting (the holdout used to report "the regression label is
    constant" of the empty train share; the source read "the command line and the command
    line")."""
    frame = pd.DataFrame({"a": NUMBERS, "target": np.linspace(0, 1, ROWS)})
    frame.to_csv(tmp_path / "train.csv", index=False)
    root = tmp_path / "run"
    rc, failure = train(root, tmp_path / "train.csv", hp=hp)
    assert rc == 1 and failure.startswith(expected.format(train=tmp_path / "train.csv")), failure


# --- fuzzing generated frames --------------------------------------------------------------

ODD_TEXT = st.sampled_from(["", " ", "nan", "None", "inf", "1e400", "é☃", "a,b", 'q"', "\n"])
CELL = {
    "float": st.floats(allow_nan=True, allow_infinity=True) | st.none(),
    "int": st.integers(-(2**70), 2**70),
    "small": st.integers(0, 3),
    "text": st.text(max_size=8) | ODD_TEXT | st.none(),
    "bool": st.booleans() | st.none(),
    "mixed": st.one_of(st.integers(-5, 5), ODD_TEXT, st.booleans(), st.none()),
}
COLUMN_NAME = st.text(min_size=0, max_size=6) | st.sampled_from(["target ", "a", "\n", "é"])


@st.composite
def frames(draw) -> tuple[pd.DataFrame, str]:
    rows = draw(st.integers(0, 14))
    names = draw(st.lists(COLUMN_NAME, min_size=1, max_size=3, unique=True))
    names = [n for n in names if n != "target"] or ["f"]
    columns: dict[str, list] = {}
    for name in [*names, "target"]:
        kind = draw(st.sampled_from(sorted(CELL)))
        columns[name] = draw(st.lists(CELL[kind], min_size=rows, max_size=rows))
    return pd.DataFrame(columns), draw(st.sampled_from(["csv", "parquet", "jsonl"]))


def write_frame(frame: pd.DataFrame, root: Path, kind: str) -> Path:
    path = root / f"train.{kind}"
    if kind == "parquet":
        try:
            frame.to_parquet(path)
            return path
        except (pa.ArrowException, ValueError, OverflowError):  # a mix arrow cannot store
            path = root / "train.csv"
    if kind == "jsonl":
        path.write_text(frame.to_json(orient="records", lines=True))
    else:
        frame.to_csv(path, index=False)
    return path


@fuzz_settings(max_examples=30)
@given(frames())
def test_any_generated_frame_trains_or_is_a_data_error(tmp_path_factory, generated):
    frame, kind = generated
    root = tmp_path_factory.mktemp("fuzz")
    rc, failure = train(root, write_frame(frame, root, kind))
    assert_contract(root, rc, failure)


# --- prediction ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictor")
    frame = pd.DataFrame(
        {
            "age": [31.0, np.nan, 45.0, 22.0, 60.0, 38.0] * 4,
            "visits": list(range(24)),
            "plan": ["gold", "silver", None, "gold", "bronze", "gold"] * 4,
            "active": [True, False] * 12,
            "target": ["no", "yes", "yes"] * 8,
        }
    )
    frame.to_parquet(root / "train.parquet")
    rc, failure = train(root, root / "train.parquet")
    assert rc == 0, failure
    return load_model(root / "model")


VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**1100), 2**1100)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.sampled_from(["gold", "é☃", "30", "", "NaN"]),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=4,
)
# The columns of both the `predictor` fixture and conftest's `server` (serve_support).
COLUMNS = ["age", "visits", "plan", "active"]
KEY = st.sampled_from([*COLUMNS, "extra", "", "Age"])
RECORD = st.dictionaries(KEY, VALUE, max_size=5) | st.fixed_dictionaries(
    dict.fromkeys(COLUMNS, VALUE)
)
PAYLOAD = st.lists(RECORD | VALUE, max_size=4) | VALUE


@fuzz_settings(max_examples=200)
@given(PAYLOAD)
def test_any_records_predict_or_raise_input_error(predictor, payload):
    try:
        out = predictor.predict_records(payload)
    except InputError as exc:
        message = str(exc)
        assert message.startswith(("record ", "instance ", "expected ", "column ")), message
        return
    assert isinstance(payload, list) and len(out) == len(payload)
    assert all(row["label"] in ("no", "yes") for row in out)
    assert all(math.isclose(sum(row["probabilities"].values()), 1.0) for row in out)


@fuzz_settings(max_examples=25)
@given(st.lists(RECORD, min_size=1, max_size=3))
def test_the_server_answers_any_records_with_a_4xx_or_predictions(server, records):
    response = server.client.post("/invocations", json={"instances": records})
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert "error" in response.json()
    assert server.client.get("/ping").status_code == 200
