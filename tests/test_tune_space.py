"""The search space: a table of bad inputs (each names its field and what is allowed) and
the compiled Optuna distributions, sampler and pruner."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import optuna
import pytest

from workloads.tuning.space import SpaceError, load_space, parse_space

GOOD = {
    "objective": {"metric": "accuracy", "direction": "maximize"},
    "budget": {"trials": 4, "parallel": 2},
    "fixed": {"target": "y", "epochs": 3},
    "parameters": {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
        "hidden_sizes": {"type": "categorical", "choices": ["16", "32,16"]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5, "when": {"hidden_sizes": "32,16"}},
    },
}


def with_(path: str, value, base=GOOD) -> dict:
    """GOOD with the field at `path` ('a.b.c') set to `value` (or removed for ...)."""
    doc = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return doc


BAD = [
    # (field set, value, field named, words the message must contain)
    ("objective", ..., "objective", "required"),
    ("objective.direction", "up", "objective.direction", "'maximize' or 'minimize'"),
    ("objective.metric", "val loss", "objective.metric", "must match"),
    ("budget.trials", 0, "budget.trials", "greater than or equal to 1"),
    ("budget.parallel", 0, "budget.parallel", "greater than or equal to 1"),
    ("budget.timeout", -5, "budget.timeout", "greater than 0"),
    ("budget.retries", 2, "budget.retries", "unknown field"),
    ("sampler", "cmaes", "sampler", "'tpe', 'random' or 'grid'"),
    ("pruning", "asha", "pruning.type", "'median', 'hyperband' or 'off'"),
    ("pruning", {"warmup_epochs": -1}, "pruning.warmup_epochs", "greater than or equal to 0"),
    ("pruning", {"startup_trials": -1}, "pruning.startup_trials", "greater than or equal to 0"),
    ("pruning", {"warmup_epochs": 3}, "pruning.warmup_epochs", "not below the 3 epochs"),
    ("pruning", {"type": "median", "interval": 2}, "pruning.interval", "unknown field"),
    ("parameters", {}, "parameters", "at least 1 item"),
    ("parameters.dropout.type", "uniform", "parameters.dropout", "float, int, categorical"),
    ("parameters.learning_rate.low", 0.5, "parameters.learning_rate", "must be below 'high'"),
    ("parameters.learning_rate.low", 0, "parameters.learning_rate", "'log' needs 'low' > 0"),
    ("parameters.learning_rate.step", 0.01, "parameters.learning_rate", "cannot be combined"),
    ("parameters.batch_size.log", True, "parameters.batch_size", "'log' needs step 1"),
    ("parameters.batch_size.low", "many", "parameters.batch_size.low", "valid integer"),
    ("parameters.hidden_sizes.choices", [], "parameters.hidden_sizes.choices", "at least 1"),
    (
        "parameters.hidden_sizes.choices",
        [[32, 16]],
        "parameters.hidden_sizes.choices",
        "write a list as a string",
    ),  # fmt: skip
    (
        "parameters.hidden_sizes.choices",
        ["16", "16"],
        "parameters.hidden_sizes.choices",
        "repeat a value",
    ),  # fmt: skip
    (
        "parameters.dropout.when",
        {"nope": 1},
        "parameters.dropout.when",
        "not an unconditional categorical",
    ),  # fmt: skip
    (
        "parameters.dropout.when",
        {"hidden_sizes": "8"},
        "parameters.dropout.when",
        "not among 'hidden_sizes'",
    ),  # fmt: skip
    # the training contract's own rules, checked at the bounds before any trial runs
    ("parameters.dropout.high", 1.0, "parameters.dropout", "hyperparameter 'dropout'"),
    (
        "parameters.momentum",
        {"type": "float", "low": 0.1, "high": 0.9},
        "parameters.momentum",
        "unknown hyperparameter 'momentum'",
    ),  # fmt: skip
    ("fixed.target", ..., "fixed", "hyperparameter 'target' is required"),
    ("fixed.batch_size", 32, "parameters.batch_size", "also in 'fixed'"),
    # probes: a name the metric line cannot carry, booleans and non-finite numbers
    ("objective.metric", "auc\n", "objective.metric", "must match"),
    ("budget.trials", True, "budget.trials", "not a boolean"),
    ("budget.parallel", True, "budget.parallel", "not a boolean"),
    ("budget.timeout", True, "budget.timeout", "not a boolean"),
    ("budget.timeout", math.inf, "budget.timeout", "finite number"),
    ("seed", True, "seed", "not a boolean"),
    ("pruning", {"startup_trials": False}, "pruning.startup_trials", "not a boolean"),
    ("parameters.batch_size.low", True, "parameters.batch_size.low", "not a boolean"),
    ("parameters.dropout.high", math.nan, "parameters.dropout.high", "finite number"),
    ("parameters.dropout.low", -math.inf, "parameters.dropout.low", "finite number"),
    ("parameters.dropout.step", math.inf, "parameters.dropout.step", "finite number"),
    # a step the range does not hold a whole number of (Optuna would lower 'high')
    ("parameters.batch_size.step", 7, "parameters.batch_size", "make 'high' 58 or 65"),
    ("parameters.batch_size.step", 100, "parameters.batch_size", "wider than the range"),
    ("parameters.dropout.step", 0.3, "parameters.dropout", "make 'high' 0.3 or 0.6"),
    ("parameters.dropout.step", 1e-300, "parameters.dropout", "too fine for the range"),
    # choices Optuna, the harness or SageMaker cannot tell apart
    ("parameters.hidden_sizes.choices", ["16", 16], "parameters.hidden_sizes.choices", "and 16"),
    ("parameters.hidden_sizes.choices", [1, 1.0], "parameters.hidden_sizes.choices", "repeat"),
    ("parameters.hidden_sizes.choices", [1, True], "parameters.hidden_sizes.choices", "repeat"),
    ("parameters.hidden_sizes.choices", [math.nan], "parameters.hidden_sizes.choices", "finite"),
    # conditions: two parents, none of a parent's values, itself
    (
        "parameters.dropout.when",
        {"hidden_sizes": "16", "batch_size": 16},
        "parameters.dropout.when",
        "exactly one parent",
    ),  # fmt: skip
    ("parameters.dropout.when", {"hidden_sizes": []}, "parameters.dropout.when", "at least one"),
    (
        "parameters.hidden_sizes.when",
        {"hidden_sizes": "16"},
        "parameters.hidden_sizes.when",
        "conditional on itself",
    ),  # fmt: skip
    (  # a cycle: dropout needs hidden_sizes, which would need dropout
        "parameters.hidden_sizes.when",
        {"dropout": 0.1},
        "parameters.dropout.when",
        "'hidden_sizes' is not an unconditional categorical",
    ),  # fmt: skip
]


@pytest.mark.parametrize(
    ("path", "value", "field", "words"), BAD, ids=[b[0] + "=" + repr(b[1])[:20] for b in BAD]
)
def test_bad_space_names_the_field_and_what_is_allowed(path, value, field, words):
    with pytest.raises(SpaceError) as err:
        parse_space(with_(path, value), "tune.yaml")
    message = str(err.value)
    assert message.startswith("invalid search space tune.yaml:\n")
    assert field in err.value.fields, message
    assert words in message, message


def test_grid_needs_finite_parameters():
    doc = with_("sampler", "grid")
    with pytest.raises(SpaceError) as err:
        parse_space(doc, "tune.yaml")
    assert "parameters.learning_rate" in err.value.fields
    assert "needs a finite set: give 'step'" in str(err.value)
    assert "parameters.dropout.when" in err.value.fields  # the grid has no conditions


def test_file_errors(tmp_path: Path):
    with pytest.raises(SpaceError, match="not found"):
        load_space(tmp_path / "tune.yaml")
    bad = tmp_path / "tune.yaml"
    bad.write_text("objective: [unclosed\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(bad)
    bad.write_text("- a list\n")
    with pytest.raises(SpaceError, match="expected a mapping"):
        load_space(bad)


def test_a_huge_grid_is_counted_not_listed():
    """A fine step over a wide range is billions of grid points: refused at once (it was
    listed first, until memory ran out)."""
    doc = with_("sampler", "grid")
    doc["parameters"] = {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1.0, "step": 1e-9},
        "batch_size": {"type": "int", "low": 1, "high": 10**12},
    }
    with pytest.raises(SpaceError, match=r"the grid has \d+ points \(at most 10000\)"):
        parse_space(doc, "tune.yaml")


def test_a_document_too_large_or_deep_or_with_odd_keys():
    bomb: list = ["x"] * 10
    for _ in range(6):  # a million values written out, a few hundred bytes in memory
        bomb = [bomb] * 10
    deep: list = [1]
    for _ in range(40):
        deep = [deep]
    for path, value, field, words in [
        ("fixed.epochs", bomb, "(top level)", "more than 100000 values"),
        ("parameters.dropout.when", {"hidden_sizes": bomb}, "(top level)", "more than"),
        ("fixed.x", deep, "fixed.x", "deeper than 32 levels"),
        ("parameters.dropout.when", {True: "16"}, "parameters.dropout.when", "not a string"),
        ("budget.trials", 10**5000, "budget.trials", "<an integer of about"),
    ]:  # fmt: skip
        with pytest.raises(SpaceError) as err:
            parse_space(with_(path, value), "tune.yaml")
        assert err.value.fields[0].startswith(field), err.value
        assert words in str(err.value) and len(str(err.value)) < 1000, err.value


def test_file_probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Whatever the file holds, one SpaceError naming it, never another exception."""
    path = tmp_path / "tune.yaml"
    good = "objective: {metric: r2, direction: maximize}\nbudget: {trials: 3}\n"
    cases = [
        (b"\xff\xfe\x00objective: x\n", "not UTF-8 text (byte 0xff at offset 0)"),
        ("# caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 5)"),
        (b"", "expected a mapping of fields (got NoneType)"),
        (b"42\n", "expected a mapping of fields (got int)"),
        (b"[" * 3000 + b"]" * 3000, "nested deeper than 32 levels"),
        (b"a: " + b"1" * 5000 + b"\n", "not a usable YAML value"),
        ((good + "budget: {trials: 5}\n").encode(), "key 'budget' is given twice"),
        (b"parameters: {lr: 1, lr: 2}\n", "key 'lr' is given twice"),
        (b"!!python/object/apply:os.system ['true']\n", "not valid YAML"),
        (b"#" * (2 << 20), "a search space is at most 1048576"),
    ]
    for data, words in cases:
        path.write_bytes(data)
        with pytest.raises(SpaceError) as err:
            load_space(path)
        assert str(err.value).startswith(f"invalid search space {path}:"), err.value
        assert words in str(err.value), err.value
    with pytest.raises(SpaceError, match="not a file"):
        load_space(tmp_path)
    # a YAML merge key overrides what it merges: no key given twice there
    path.write_text(
        good + "fixed: {target: y}\nrange: &r {type: float, low: 0.001, high: 0.1}\n"
        "parameters:\n  learning_rate: {<<: *r, log: true}\n"
    )
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert err.value.fields == ["range"]  # parsed; only the anchor's holder is unknown
    path.write_text(good)

    def unreadable(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    with pytest.raises(SpaceError, match="cannot be read: Permission denied"):
        load_space(path)


def test_yaml_off_and_exponents(tmp_path: Path):
    path = tmp_path / "tune.yaml"
    path.write_text(
        "objective: {metric: r2, direction: maximize}\n"
        "budget: {trials: 3}\n"
        "pruning: off\n"  # YAML reads a bare off as false
        "fixed: {target: y}\n"
        "parameters:\n"
        "  learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}\n"  # strings in YAML 1.1
    )
    space = load_space(path)
    assert space.pruning.type == "off"
    assert isinstance(space.make_pruner(), optuna.pruners.NopPruner)
    assert space.parameters["learning_rate"].low == pytest.approx(1e-4)


def test_compiles_to_optuna():
    space = parse_space(GOOD, "tune.yaml")
    dists = space.distributions()
    assert dists["learning_rate"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["batch_size"] == optuna.distributions.IntDistribution(16, 64, step=16)
    assert isinstance(space.make_sampler(), optuna.samplers.TPESampler)
    assert isinstance(space.make_pruner(), optuna.pruners.MedianPruner)
    assert space.conditional() == ["dropout"]
    hyper = parse_space(with_("pruning", "hyperband"), "tune.yaml")
    assert isinstance(hyper.make_pruner(), optuna.pruners.HyperbandPruner)
    # a conditional parameter is sampled only when its condition holds
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(12):
        params = space.suggest(study.ask())
        assert ("dropout" in params) == (params["hidden_sizes"] == "32,16")
        seen.append(params["hidden_sizes"])
    assert set(seen) == {"16", "32,16"}
    grid = with_("sampler", "grid")
    del grid["parameters"]["dropout"]
    grid["parameters"]["learning_rate"] = {"type": "float", "low": 0.01, "high": 0.03, "step": 0.01}
    g = parse_space(grid, "tune.yaml")
    assert g.grid() == {
        "learning_rate": [0.01, 0.02, 0.03],
        "batch_size": [16, 32, 48, 64],
        "hidden_sizes": ["16", "32,16"],
    }
    assert g.grid_size() == 24
    assert space.fingerprint() != g.fingerprint()
    assert space.fingerprint() == parse_space(with_("budget.trials", 9), "x").fingerprint()


def test_the_grid_runs_out_under_ask_and_tell():
    """Optuna's grid calls study.stop() when its last point is taken, which raises outside
    study.optimize; the drivers ask and tell, so the space's grid does not."""
    doc = {
        "objective": {"metric": "validation_loss", "direction": "minimize"},
        "budget": {"trials": 2, "parallel": 1},
        "sampler": "grid",
        "fixed": {"target": "y"},
        "parameters": {"learning_rate": {"type": "categorical", "choices": [0.1, 0.01]}},
    }
    space = parse_space(doc, "tune.yaml")
    study = optuna.create_study(sampler=space.make_sampler())
    for _ in range(space.grid_size()):
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, trial.params["learning_rate"])  # the last one raised before
    assert sorted(t.params["learning_rate"] for t in study.trials) == [0.01, 0.1]


def test_median_pruning_defaults():
    """Warm-up: a tenth of a trial's epochs, at least 1, unless given."""
    three = parse_space(GOOD, "tune.yaml")  # 3 epochs per trial
    assert three.pruning.type == "median" and three.pruning.startup_trials == 5
    assert three.warmup_epochs() == 1
    thirty = parse_space(with_("fixed.epochs", 30), "tune.yaml")
    assert thirty.warmup_epochs() == 3
    assert thirty.make_pruner()._n_warmup_steps == 3
    assert thirty.make_pruner()._n_startup_trials == 5
    given = parse_space(with_("pruning", {"type": "median", "warmup_epochs": 0}), "tune.yaml")
    assert given.warmup_epochs() == 0 and given.make_pruner()._n_warmup_steps == 0
    assert parse_space(with_("pruning", {"warmup_epochs": 2}), "x").warmup_epochs() == 2
    # the old long form still reads (the hyperband factor, explicit median settings)
    hyper = parse_space(with_("pruning", {"type": "hyperband", "reduction_factor": 2}), "x")
    assert hyper.make_pruner()._reduction_factor == 2
    # hyperband and off do not warm up: a warm-up as long as the trial is no error there
    assert parse_space(with_("pruning", {"type": "off", "warmup_epochs": 3}), "x")
    # a study (and a SageMaker tuning job's name) is made from its pruning too
    assert given.fingerprint() != three.fingerprint() != parse_space(with_("pruning", "off"), "x")
