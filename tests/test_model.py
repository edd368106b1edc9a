"""The model artifact and the serving-side preprocessing (no training needed)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from workloads.training.artifact import load_model, save_artifact
from workloads.training.tasks.base import InputError
from workloads.training.tasks.tabular import TabularNet
from workloads.training.tasks.tabular.model import Predictor
from workloads.training.tasks.tabular.preprocess import Preprocessor


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [31.0, np.nan, 45.0, 22.0, 60.0, 38.0],
            "visits": [1, 4, 2, 7, 3, 3],
            "plan": ["gold", "silver", None, "gold", "bronze", "gold"],
            "active": [True, False, True, True, False, True],
        }
    )


def records_of(frame: pd.DataFrame) -> list[dict]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in frame.astype(object).to_dict("records")
    ]


class _SavedTask:
    """What `save_artifact` asks of a task: write its files, return its meta."""

    def __init__(self, pre: Preprocessor, meta: dict):
        self.pre, self.meta = pre, meta

    def save(self, directory, model):
        (directory / "preprocess.json").write_text(json.dumps(self.pre.to_dict()))
        return self.meta


def make_model(tmp_path, frame, task="multiclass", classes=("no", "maybe", "yes"), format=2):
    """A tabular artifact as the harness writes it (format 2: task "tabular" plus the
    problem), or as format 1 did (the problem recorded as the task, no format key)."""
    pre = Preprocessor.fit(frame)
    torch.manual_seed(0)
    out_dim = 1 if task == "regression" else len(classes)
    net = TabularNet(pre.output_dim, out_dim, [8], 0.0)
    torch.nn.init.normal_(net.deep[-1].weight)  # zero-initialised otherwise: give it a shape
    meta = {
        "target": "y",
        "classes": None if task == "regression" else list(classes),
        "feature_columns": pre.feature_columns,
        "in_dim": pre.output_dim,
        "out_dim": out_dim,
        "hidden_sizes": [8],
        "dropout": 0.0,
        "target_mean": 10.0,
        "target_scale": 2.0,
    }
    model_dir = tmp_path / "model"
    if format == 1:
        model_dir.mkdir(exist_ok=True)
        torch.save(net.state_dict(), model_dir / "model.pt")
        (model_dir / "preprocess.json").write_text(json.dumps(pre.to_dict()))
        (model_dir / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
        (model_dir / "meta.json").write_text(json.dumps({"format": 1, "task": task, **meta}))
        return model_dir, net, pre
    saved = _SavedTask(pre, {"problem": task, **meta})
    save_artifact(model_dir, saved, net, {"task": "tabular"}, {"accuracy": 0.5})
    return model_dir, net, pre


def test_three_input_paths_agree_bit_for_bit(frame):
    pre = Preprocessor.fit(frame)
    from_frame = pre.transform_frame(frame)
    from_records = pre.prepare_records(records_of(frame))
    rows = [["" if v is None else str(v) for v in r.values()] for r in records_of(frame)]
    from_rows = pre.prepare_rows(rows)
    assert from_frame.dtype == np.float32
    assert np.array_equal(from_frame, from_records)
    assert np.array_equal(from_frame, from_rows)


def test_fitted_transformation(frame):
    pre = Preprocessor.fit(frame)
    age = pre.columns[0]
    assert age.median == 38.0  # median of the present values
    x = pre.prepare_records(
        [{"age": None, "visits": 3, "plan": "platinum", "active": None}]  # unseen category
    )
    assert x[0, 0] == np.float32((38.0 - age.mean) / age.scale)
    plan = pre.columns[2]
    assert plan.categories[0] == "gold"  # most frequent first
    assert not x[0, plan.offset : plan.offset + plan.width].any()  # unseen -> all zeros
    # numeric columns come out standardised on the training data
    scaled = pre.transform_frame(frame)[:, 1]
    assert abs(scaled.mean()) < 1e-6 and abs(scaled.std() - 1) < 1e-5


def test_preprocessing_roundtrips_through_json(frame):
    pre = Preprocessor.fit(frame)
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert np.array_equal(pre.transform_frame(frame), again.transform_frame(frame))


GOOD = {"age": 30.0, "visits": 2, "plan": "gold", "active": True}


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ({"age": 1}, "expected a list of records, got dict"),
        ([], "empty list"),
        ([GOOD, "x"], "record 1: expected an object"),
        (
            [GOOD, {k: v for k, v in GOOD.items() if k != "plan"}],
            "record 1: missing column(s) plan",
        ),
        ([{**GOOD, "zip": "123"}], "record 0: unexpected column(s) zip"),
        ([GOOD, {**GOOD, "age": "30"}], "record 1: column 'age' expects a number, got str"),
        ([{**GOOD, "visits": True}], "record 0: column 'visits' expects a number, got bool"),
        ([{**GOOD, "plan": 3}], "record 0: column 'plan' expects a string, got int"),
        ([{**GOOD, "active": "yes"}], "record 0: column 'active' expects true or false"),
        ([GOOD, GOOD, {**GOOD, "age": float("inf")}], "record 2: column 'age' has a non-finite"),
        ([{**GOOD, "age": float("nan")}], "record 0: column 'age' has a non-finite"),
        # Finite, but not in float32 once standardised: the dtype the model computes in.
        ([GOOD, {**GOOD, "age": 1e308}], "record 1: column 'age' value 1e+308 is out of range"),
        ([{**GOOD, "age": -1e40}], "record 0: column 'age' value -1e+40 is out of range"),
        ([{**GOOD, "visits": 10**300}], "record 0: column 'visits' value 1e+300 is out of range"),
    ],
)
def test_bad_records_are_named(frame, records, message):
    pre = Preprocessor.fit(frame)
    with pytest.raises(InputError) as err:
        pre.prepare_records(records)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["30", "2", "gold"]], "row 0: expected 4 values (age, visits, plan, active), got 3"),
        ([["30", "2", "gold", "true"], ["x", "2", "gold", "true"]], "row 1: column 'age'"),
        ([["30", "2", "gold", "maybe"]], "row 0: column 'active' expects true or false"),
        ([["30", "2", "gold", "1"], ["inf", "2", "", ""]], "row 1: column 'age' has a non-finite"),
        ([["30", "1e308", "gold", "1"]], "row 0: column 'visits' value '1e308' is out of range"),
        ("30,2,gold,true", "expected a list of rows"),
    ],
)
def test_bad_rows_are_named(frame, rows, message):
    with pytest.raises(InputError) as err:
        Preprocessor.fit(frame).prepare_rows(rows)
    assert message in str(err.value)


def test_every_path_refuses_values_beyond_float32(frame):
    pre = Preprocessor.fit(frame)
    age = pre.columns[0]
    edge = age.mean + age.scale * 3.0e38  # standardised: 3.0e38, within float32
    x = pre.prepare_records([{**GOOD, "age": edge}])
    assert np.isfinite(x).all() and x[0, 0] == pytest.approx(3.0e38, rel=1e-6)
    beyond = age.mean + age.scale * 3.5e38
    with pytest.raises(InputError, match="record 0: column 'age' value .* is out of range"):
        pre.prepare_records([{**GOOD, "age": beyond}])
    with pytest.raises(InputError, match="row 0: column 'age' value '.*' is out of range"):
        pre.prepare_rows([[repr(beyond), "2", "gold", "true"]])
    with pytest.raises(InputError, match=re.escape(f"row 2: column 'age' value {beyond:.6g} is")):
        pre.transform_frame(frame.assign(age=[30.0, 31.0, beyond, 1.0, 2.0, 3.0]))


def test_predictor_refuses_an_input_that_overflows_the_network(tmp_path, frame):
    model_dir, _, pre = make_model(tmp_path, frame)
    predictor = load_model(model_dir)
    with torch.no_grad():  # every input adds up: 3e38 in any two columns overflows float32
        predictor.net.wide.weight.fill_(1.0)
    predictor = Predictor(predictor.net, predictor.preprocessor, predictor.meta)  # reloaded
    x = pre.prepare_records(records_of(frame)[:3])
    x[1, pre.columns[1].offset] = 3.0e38  # visits: finite in float32, as the checks allow
    x[1, pre.columns[0].offset] = 2.0e38
    with pytest.raises(InputError, match="instance 1: the model's output overflows float32"):
        predictor.predict_matrix(x)
    with pytest.raises(InputError, match="column 'visits' is 3e\\+38 training standard dev"):
        predictor.predict_matrix(x)
    assert len(predictor.predict_matrix(np.delete(x, 1, axis=0))) == 2


def test_load_model_refuses_non_finite_weights(tmp_path, frame):
    model_dir, net, _ = make_model(tmp_path, frame)
    state = net.state_dict()
    state["deep.0.weight"][0, 0] = float("nan")
    torch.save(state, model_dir / "model.pt")
    with pytest.raises(ValueError, match="non-finite weights in deep.0.weight"):
        load_model(model_dir)


@pytest.mark.parametrize("format", [1, 2])
def test_predictor_classification(tmp_path, frame, format):
    model_dir, net, pre = make_model(tmp_path, frame, format=format)
    predictor = load_model(model_dir)
    assert predictor.feature_columns == ["age", "visits", "plan", "active"]
    assert predictor.task == "multiclass" and predictor.classes == ["no", "maybe", "yes"]
    assert predictor.metrics == {"accuracy": 0.5}
    records = records_of(frame)
    out = predictor.predict_records(records)
    assert len(out) == len(records)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(pre.transform_frame(frame))), 1).numpy()
    for row, probs in zip(out, expected, strict=True):
        assert set(row["probabilities"]) == {"no", "maybe", "yes"}
        assert math.isclose(sum(row["probabilities"].values()), 1.0, rel_tol=1e-5)
        assert row["label"] == ["no", "maybe", "yes"][int(probs.argmax())]
        assert np.allclose(list(row["probabilities"].values()), probs, atol=1e-6)


@pytest.mark.parametrize("format", [1, 2])
def test_predictor_regression_undoes_target_scaling(tmp_path, frame, format):
    model_dir, net, pre = make_model(tmp_path, frame, task="regression", format=format)
    out = load_model(model_dir).predict_records(records_of(frame)[:2])
    with torch.no_grad():
        raw = net(torch.from_numpy(pre.transform_frame(frame.iloc[:2])))[:, 0].double()
    assert all(isinstance(v, float) for v in out)
    assert np.allclose(out, (raw * 2.0 + 10.0).numpy(), atol=1e-5)


def test_predict_matrix_checks_width(tmp_path, frame):
    predictor = load_model(make_model(tmp_path, frame)[0])
    with pytest.raises(InputError, match="columns"):
        predictor.predict_matrix(np.zeros((2, 3), dtype=np.float32))


def test_save_replaces_atomically_and_failed_save_keeps_old(tmp_path, frame, monkeypatch):
    model_dir, _, _ = make_model(tmp_path, frame)
    before = (model_dir / "model.pt").read_bytes()
    make_model(tmp_path, frame, classes=("a", "b", "c"))  # replace in place
    assert load_model(model_dir).classes == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dirs left

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        make_model(tmp_path, frame)
    assert load_model(model_dir).classes == ["a", "b", "c"]  # the old artifact is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert before  # the first artifact was a real file


def test_load_model_names_missing_files(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "meta.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_model(tmp_path / "m")
    for name in ("model.pt", "metrics.json"):
        (tmp_path / "m" / name).write_text("{}")
    with pytest.raises(FileNotFoundError, match="does not name the task"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "meta.json").write_text('{"task": "tabular"}')
    with pytest.raises(FileNotFoundError, match="preprocess.json"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "meta.json").write_text('{"task": "nosuch.module:Task"}')
    with pytest.raises(FileNotFoundError, match="cannot load task 'nosuch.module:Task'"):
        load_model(tmp_path / "m")


def test_the_inference_plan_computes_what_the_network_does() -> None:
    from torch import nn

    from workloads.training.tasks.tabular.model import run_plan

    torch.manual_seed(0)
    net = TabularNet(7, 3, [16, 8], dropout=0.5).eval()
    for param in net.parameters():  # the deep path starts at zero: give it weights
        nn.init.normal_(param)
    x = torch.randn(5, 7)
    plan = net.inference_plan()
    assert plan is not None and [relu for _, _, relu in plan] == [True, True, False, False]
    with torch.inference_mode():
        assert torch.equal(run_plan(plan, x), net(x))
    net.deep.insert(1, nn.Tanh())  # a layer the plan does not know: the module path
    assert net.inference_plan() is None


def _mixed_records(rng: np.random.Generator, count: int) -> list[dict]:
    """Records with every kind of value a client sends: ints, floats, tiny and huge numbers,
    missing values, unseen categories, and now and then a value that is wrong for its column."""
    numbers = [0, 3, -7, 2.5, -1e-300, 1e30, -4.4e38, 10**20, 10**400, None, float("nan"), True]
    plans = ["gold", "silver", "bronze", "platinum", "", None, 3]
    flags = [True, False, None, 1]
    return [
        {
            "age": numbers[rng.integers(len(numbers))] if rng.random() < 0.3 else rng.normal(40, 9),
            "visits": numbers[rng.integers(len(numbers))]
            if rng.random() < 0.3
            else int(rng.integers(9)),
            "plan": plans[rng.integers(len(plans))],
            "active": flags[rng.integers(len(flags))],
        }
        for _ in range(count)
    ]


def test_the_small_batch_encoder_is_the_vectorised_path_bit_for_bit(frame, monkeypatch):
    """`_encode_small` (requests of a few records) either gives exactly what the vectorised
    path gives, or hands the input over (None), which then accepts or refuses it itself."""
    from workloads.training.tasks.tabular import preprocess

    pre = Preprocessor.fit(frame)
    small_batch = preprocess.SMALL_BATCH
    rng = np.random.default_rng(0)
    taken = handed = 0
    for _ in range(400):
        records = _mixed_records(rng, int(rng.integers(1, 4)))
        small = pre._encode_small(records)
        monkeypatch.setattr(preprocess, "SMALL_BATCH", 0)  # the vectorised path only
        try:
            expected = pre.prepare_records(records)
        except InputError:
            expected = None
        monkeypatch.setattr(preprocess, "SMALL_BATCH", small_batch)
        if small is None:
            handed += 1
            continue
        taken += 1
        assert expected is not None, records
        assert small.dtype == np.float32 and np.array_equal(small, expected), records
        assert np.array_equal(pre.prepare_records(records), expected)  # what serving calls
    assert taken > 50 and handed > 50  # both outcomes were exercised
    # Well-formed records always take the small path.
    assert pre._encode_small(records_of(frame)) is not None
    assert pre._encode_small([{**records_of(frame)[0], "extra": 1}]) is None
    # The encoder is written for the columns: names that are not identifiers work too.
    odd = {"age": "a'ge\"\\n", "plan": "plan\nx"}
    renamed = Preprocessor.fit(frame.rename(columns=odd))
    records = [{odd.get(k, k): v for k, v in r.items()} for r in records_of(frame)]
    assert np.array_equal(renamed._encode_small(records), pre.prepare_records(records_of(frame)))


def test_the_small_batch_encoder_with_non_finite_training_statistics():
    """Training values near the float64 limit make the mean inf: a request is refused with
    the vectorised path's message (the written encoder used to fail on the name `inf`)."""
    pre = Preprocessor.fit(pd.DataFrame({"x": [1e308, 1.5e308, 1e308, 2.0], "c": list("abab")}))
    assert not math.isfinite(pre.columns[0].mean)
    for value in (1.0, None):
        with pytest.raises(InputError, match="column 'x' value .* is out of range"):
            pre.prepare_records([{"x": value, "c": "a"}])


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_the_numpy_forward_pass_matches_torch(tmp_path, frame, task):
    """Small batches run the network in numpy; the answers match the torch path to float32
    rounding, with the same labels."""
    from torch import nn

    model_dir, net, pre = make_model(tmp_path, frame, task=task)
    predictor = load_model(model_dir)
    with torch.no_grad():
        for param in predictor.net.parameters():
            nn.init.normal_(param)  # every layer matters, not only the wide path
    predictor = Predictor(predictor.net, predictor.preprocessor, predictor.meta)  # reloaded
    assert predictor.numpy_max_rows >= 16  # a small network: serving's batches take numpy
    x = np.random.default_rng(1).normal(size=(64, pre.output_dim)).astype(np.float32)
    via_numpy = [predictor.predict_matrix(x[i : i + 4]) for i in range(0, 64, 4)]
    via_numpy = [p for chunk in via_numpy for p in chunk]
    limit, predictor.numpy_max_rows = predictor.numpy_max_rows, 0
    via_torch = predictor.predict_matrix(x)
    predictor.numpy_max_rows = limit
    assert len(via_numpy) == len(via_torch) == 64
    if task == "regression":
        assert all(type(v) is float for v in via_numpy)
        assert np.allclose(via_numpy, via_torch, rtol=1e-5, atol=1e-5)
        return
    for ours, theirs in zip(via_numpy, via_torch, strict=True):
        assert ours["label"] == theirs["label"]
        assert list(ours["probabilities"]) == list(theirs["probabilities"])
        assert np.allclose(
            list(ours["probabilities"].values()),
            list(theirs["probabilities"].values()),
            rtol=1e-5,
            atol=1e-7,
        )


def test_a_large_network_keeps_the_torch_forward_pass(tmp_path, frame):
    model_dir, _, pre = make_model(tmp_path, frame)
    predictor = load_model(model_dir)
    predictor._numpy_plan.clear()  # would fail if used
    predictor.numpy_max_rows = 0
    assert len(predictor.predict_matrix(pre.prepare_records(records_of(frame)))) == 6
