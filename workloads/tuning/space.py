"""The search space: a YAML file validated like the stack spec, compiled to Optuna.

    study: churn-mlp                     # optional; default: the model group and file name
    objective: {metric: auc, direction: maximize}
    budget: {trials: 30, parallel: 2, timeout: 3600}   # timeout in seconds, optional
    sampler: tpe                         # tpe (default), random, grid
    pruning: median                      # median (default), hyperband, off
    seed: 0
    fixed: {target: churned, epochs: 30} # hyperparameters every trial gets
    parameters:
      learning_rate: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
      batch_size: {type: int, low: 32, high: 256, step: 32}
      hidden_sizes: {type: categorical, choices: ["64", "128,64"]}
      dropout: {type: float, low: 0.0, high: 0.5, when: {hidden_sizes: "128,64"}}

A parameter is a hyperparameter of the training contract (the harness settings and the
task's own); `when` makes it conditional on a categorical parameter's value. A `step` must
divide `high - low` (Optuna would lower `high` with only a warning); numbers are finite and
never booleans (YAML reads `yes` as true); choices are distinct as Optuna (`1 == 1.0 ==
true`) and the harness (`16` and `"16"`) see them; a key given twice in the file is an
error (YAML keeps the last).

Pruning `median` stops a trial whose best objective so far is worse than the median of
the completed trials' at the same epoch (Optuna's `MedianPruner`); the drivers report each
epoch's running best, the epoch the harness would keep (`workloads.tuning.progress`). Its
settings, in the long form `pruning: {type: median, startup_trials: 5, warmup_epochs: 3}`:
`startup_trials` (default 5) trials complete before any is pruned, and a trial runs
`warmup_epochs` epochs before it may be (default: a tenth of the trial's epochs, at least
1, so a slow start is not mistaken for a poor trial). `hyperband` takes `reduction_factor`
(default 3). A bad space
fails before any trial, with the file, the field and what is allowed (`SpaceError`); a
space a backend cannot express is refused by that backend with the reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import reprlib
import warnings
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from workloads.training.contract import ContractError, parse_hyperparameters
from workloads.training.metric_line import check_name
from workloads.yaml_file import YamlFileError, read_yaml

if TYPE_CHECKING:
    import optuna

DEFAULT_FILE = "tune.yaml"
Scalar = str | int | float | bool | None
MAX_GRID = 10_000
STUDY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# What a search space may hold: far more than any real one, little enough that a YAML
# alias bomb or a pathological nesting fails at once instead of exhausting memory.
MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 32


class SpaceError(ValueError):
    """A search space that cannot be searched: every problem, with its field path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"invalid search space {source}:"]
        lines += [f"  {path}: {message}" for path, message in problems]
        super().__init__("\n".join(lines))

    @property
    def fields(self) -> list[str]:
        return [path for path, _ in self.problems]


def _not_bool(value: Any) -> Any:
    # pydantic reads true as 1; YAML makes `yes`, `on` and `true` booleans.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, not a boolean (got {value!r})")
    return value


# Numbers: never a boolean; a float is finite.
Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool), AllowInfNan(False)]


def _show(value: Any) -> str:
    """A value for a message: short however large or deep (a YAML alias bomb, an integer
    of thousands of digits)."""
    try:
        return _SHORT.repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"<an integer of about {value.bit_length() * 3 // 10} digits>"


_SHORT = reprlib.Repr()  # Python 3.11 takes no settings in the constructor
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 3, 8, 8
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 80, 80, 40


def _text(value: Scalar) -> str:
    """A choice as the harness gets it through the environment or SageMaker (strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else repr(value)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Param(_Model):
    # {parent: value or [values]}: sampled only when the parent categorical has that value
    when: dict[str, Scalar | list[Scalar]] | None = None

    def condition(self) -> tuple[str, list[Scalar]] | None:
        if not self.when:
            return None
        ((parent, values),) = self.when.items()
        return parent, values if isinstance(values, list) else [values]


class FloatParam(_Param):
    type: Literal["float"]
    low: Float
    high: Float
    log: bool = False
    step: Float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("'step' and 'log' cannot be combined; drop one")
        if self.step is not None:
            _check_step(Decimal(str(self.low)), Decimal(str(self.high)), Decimal(str(self.step)))
        return self

    def count(self) -> int | None:
        """How many values the range has (None: continuous)."""
        if self.step is None:
            return None
        span = Decimal(str(self.high)) - Decimal(str(self.low))
        return int(span // Decimal(str(self.step))) + 1

    def values(self) -> list[Any] | None:
        count = self.count()
        if count is None or self.step is None:
            return None
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def bounds(self) -> list[Any]:
        return [self.low, self.high]


class IntParam(_Param):
    type: Literal["int"]
    low: Int
    high: Int
    step: Int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("'log' needs step 1; drop 'step' or 'log'")
        _check_step(Decimal(self.low), Decimal(self.high), Decimal(self.step))
        return self

    def count(self) -> int:
        return (self.high - self.low) // self.step + 1

    def values(self) -> list[Any]:
        return list(range(self.low, self.high + 1, self.step))

    def bounds(self) -> list[Any]:
        return [self.low, self.high]


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @field_validator("choices", mode="before")
    @classmethod
    def _scalars(cls, value: Any) -> Any:
        if isinstance(value, list):
            for choice in value:
                if isinstance(choice, list | dict):
                    raise ValueError(
                        f"choice {_show(choice)} is not a scalar: choices are strings, numbers, "
                        "booleans or null (write a list as a string, e.g. '128,64')"
                    )
        return value

    @field_validator("choices")
    @classmethod
    def _unique(cls, value: list[Scalar]) -> list[Scalar]:
        # Optuna finds a choice by equality (1, 1.0 and true are one choice to it), and the
        # harness and SageMaker get each as a string ('16' and 16 are one trial to them).
        seen: dict[Any, Scalar] = {}
        texts: dict[str, Scalar] = {}
        for choice in value:
            if isinstance(choice, float) and not math.isfinite(choice):
                raise ValueError(f"choice {choice!r} is not a finite number")
            first = seen.get(choice, texts.get(_text(choice), ...))
            if first is not ...:
                raise ValueError(
                    f"choices {_show(value)} repeat a value: {first!r} and {choice!r} are "
                    "one hyperparameter value"
                )
            seen[choice], texts[_text(choice)] = choice, choice
        return value

    def count(self) -> int:
        return len(self.choices)

    def values(self) -> list[Any]:
        return list(self.choices)

    def bounds(self) -> list[Any]:
        return list(self.choices)


def _check_range(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ValueError(f"'low' ({_show(low)}) must be below 'high' ({_show(high)})")
    if log and low <= 0:
        raise ValueError(f"'log' needs 'low' > 0 (got {_show(low)})")


def _check_step(low: Decimal, high: Decimal, step: Decimal) -> None:
    """The range must hold a whole number of steps: Optuna would otherwise lower 'high'
    (with only a warning), and the search would not cover what the file says."""
    try:
        steps = (high - low) // step
        fits = (high - low) % step == 0
    except InvalidOperation:  # a step many orders of magnitude below the range
        steps, fits = None, False
    if steps is None or steps > 10**12:
        raise ValueError(
            f"'step' ({step}) is too fine for the range {low} to {high}: "
            "drop 'step' for a continuous range"
        )
    if steps == 0:
        raise ValueError(f"'step' ({step}) is wider than the range {low} to {high}")
    if not fits:
        top = low + steps * step
        raise ValueError(
            f"'high' - 'low' ({high - low}) is not a whole number of steps of {step}: "
            f"make 'high' {top} or {top + step}"
        )


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Objective(_Model):
    metric: str = Field(min_length=1)
    direction: Literal["maximize", "minimize"]

    @field_validator("metric")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)


class Budget(_Model):
    trials: Int = Field(ge=1, le=100_000)
    parallel: Int = Field(1, ge=1, le=1000)
    timeout: Float | None = Field(None, gt=0)  # seconds; no new trial starts after it


class Pruning(_Model):
    type: Literal["median", "hyperband", "off"] = "median"
    startup_trials: Int = Field(5, ge=0)  # median: trials completed before pruning starts
    # median: epochs a trial runs before it may be pruned; None: a tenth of its epochs
    warmup_epochs: Int | None = Field(None, ge=0)
    reduction_factor: Int = Field(3, ge=2)  # hyperband


class SearchSpace(_Model):
    study: str | None = Field(None, pattern=STUDY_NAME)
    objective: Objective
    budget: Budget
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruning: Pruning = Pruning()
    seed: Int | None = Field(None, ge=0, le=2**32 - 1)
    fixed: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Param] = Field(min_length=1)

    @field_validator("pruning", mode="before")
    @classmethod
    def _pruning(cls, value: Any) -> Any:
        # YAML reads a bare `off` (and `no`) as false.
        if value is False or value is None or value == "none":
            return {"type": "off"}
        return {"type": value} if isinstance(value, str) else value

    # -- what drivers use -----------------------------------------------------------------

    def conditional(self) -> list[str]:
        return [name for name, p in self.parameters.items() if p.when]

    def epochs(self) -> int:
        """The most epochs a trial runs (the `epochs` hyperparameter or the harness's)."""
        return int(
            parse_hyperparameters(dict(self.fixed), "the space's fixed hyperparameters").epochs
        )

    def warmup_epochs(self) -> int:
        """The epochs a trial runs before the median pruner may stop it."""
        if self.pruning.warmup_epochs is not None:
            return self.pruning.warmup_epochs
        return max(1, self.epochs() // 10)

    def fingerprint(self) -> str:
        """What a study was created from: resuming with another space is refused."""
        doc = self.model_dump(mode="json", exclude={"budget", "study"})
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def grid(self) -> dict[str, list[Any]]:
        return {name: p.values() for name, p in self.parameters.items()}  # type: ignore[misc]

    def grid_size(self) -> int:
        """The grid's points, counted without listing them (a fine step has billions)."""
        return math.prod(p.count() or 0 for p in self.parameters.values())

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        from optuna import distributions as d

        out: dict[str, d.BaseDistribution] = {}
        for name, p in self.parameters.items():
            if isinstance(p, FloatParam):
                out[name] = d.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, IntParam):
                out[name] = d.IntDistribution(p.low, p.high, log=p.log, step=p.step)
            else:
                out[name] = d.CategoricalDistribution(p.choices)
        return out

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample a trial's parameters, in file order; a conditional one only when its
        condition holds (define-by-run, so TPE and random samplers handle it)."""
        chosen: dict[str, Any] = {}
        for name, p in self.parameters.items():
            cond = p.condition()
            if cond and chosen.get(cond[0]) not in cond[1]:
                continue
            if isinstance(p, FloatParam):
                chosen[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
            elif isinstance(p, IntParam):
                chosen[name] = trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
            else:
                chosen[name] = trial.suggest_categorical(name, p.choices)
        return chosen

    def hyperparameters(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's full hyperparameters: the fixed ones plus its sampled ones."""
        return dict(self.fixed) | dict(params)

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        import optuna

        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        if self.sampler == "grid":

            class Grid(optuna.samplers.GridSampler):
                def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                    """Optuna's grid calls `study.stop()` once every point is taken, which
                    raises outside `study.optimize`; the drivers ask and tell, and stop at
                    `grid_size()` trials themselves."""

            return Grid(self.grid(), seed=self.seed)
        # multivariate + group: parameters are sampled jointly (and conditional ones by the
        # group they appear in); constant_liar: parallel workers do not all sample next to
        # one running trial. Optuna still marks these experimental.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=self.seed,
                constant_liar=self.budget.parallel > 1,
                multivariate=True,
                group=True,
            )

    def make_pruner(self) -> optuna.pruners.BasePruner:
        import optuna

        p = self.pruning
        if p.type == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=p.startup_trials, n_warmup_steps=self.warmup_epochs()
            )
        if p.type == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=1, max_resource=self.epochs(), reduction_factor=p.reduction_factor
            )
        return optuna.pruners.NopPruner()


# Field names in messages: as written in the file.
def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("float", "int", "categorical"):  # the union's tag: not a field
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: Mapping[str, Any]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required"
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return f"'type' must be one of: float, int, categorical (got {_show(err.get('input'))})"
    if kind == "literal_error":
        return f"got {_show(err['input'])}; allowed: {ctx.get('expected', '')}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{msg} (got {_show(err['input'])})" if "got" not in msg else msg


def _cross_checks(space: SearchSpace) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    names = list(space.parameters)
    for name, p in space.parameters.items():
        at = f"parameters.{name}"
        if name in space.fixed:
            problems.append(
                (at, f"{name!r} is also in 'fixed'; a hyperparameter is one or the other")
            )
        if p.when is not None and len(p.when) != 1:
            problems.append((f"{at}.when", "name exactly one parent parameter: {parent: value}"))
            continue
        cond = p.condition()
        if cond:
            parent, values = cond
            other = space.parameters.get(parent)
            if parent == name:
                problems.append((f"{at}.when", f"{name!r} cannot be conditional on itself"))
            elif not values:
                problems.append(
                    (f"{at}.when", f"name at least one value of {parent!r} (got an empty list)")
                )
            elif not isinstance(other, CategoricalParam) or other.when:
                problems.append(
                    (
                        f"{at}.when",
                        f"{parent!r} is not an unconditional categorical parameter; "
                        f"declared: {', '.join(n for n in names if n != name)}",
                    )
                )
            elif names.index(parent) > names.index(name):
                problems.append((f"{at}.when", f"{parent!r} must be declared before {name!r}"))
            else:
                bad = [v for v in values if v not in other.choices]
                if bad:
                    problems.append(
                        (
                            f"{at}.when",
                            f"{_show(bad)} not among {parent!r}'s choices {_show(other.choices)}",
                        )
                    )
    if space.sampler == "grid":
        for name, p in space.parameters.items():
            if p.when:
                problems.append((f"parameters.{name}.when", "the grid sampler has no conditions"))
            if isinstance(p, FloatParam) and p.step is None:
                problems.append(
                    (
                        f"parameters.{name}",
                        "the grid sampler needs a finite set: give 'step', or make it categorical",
                    )
                )
        if not problems and space.grid_size() > MAX_GRID:
            problems.append(
                ("sampler", f"the grid has {space.grid_size()} points (at most {MAX_GRID})")
            )
    try:
        epochs = space.epochs()
    except ContractError:
        epochs = None  # reported with 'fixed' below
    if epochs is not None and space.pruning.type == "hyperband" and epochs < 2:
        problems.append(("pruning", "hyperband needs at least 2 epochs per trial"))
    warmup = space.pruning.warmup_epochs
    if epochs is not None and space.pruning.type == "median" and (warmup or 0) >= epochs:
        problems.append(
            (
                "pruning.warmup_epochs",
                f"{warmup} is not below the {epochs} epochs a trial runs: no trial could be "
                f"pruned (allowed: 0 to {epochs - 1}, or pruning: off)",
            )
        )
    return problems


def _contract_checks(space: SearchSpace) -> list[tuple[str, str]]:
    """Every value a trial can get must be a hyperparameter the training contract accepts:
    the fixed ones alone, then each parameter at its bounds (or each choice)."""
    problems: list[tuple[str, str]] = []
    try:
        parse_hyperparameters(dict(space.fixed), "fixed")
    except ContractError as exc:
        return [("fixed", str(exc).removeprefix("fixed: "))]
    for name, p in space.parameters.items():
        for value in p.bounds():
            source = f"parameters.{name}"
            try:
                parse_hyperparameters(space.hyperparameters({name: value}), source)
            except ContractError as exc:
                problems.append((source, str(exc).removeprefix(f"{source}: ")))
                break
    return problems


def _shape_problem(doc: Any) -> tuple[str, str] | None:
    """What makes a document no search space by its shape alone: a key that is not a
    string, nesting deeper than `MAX_DEPTH`, or more than `MAX_VALUES` values counted as
    written out (a YAML alias counts each time it is used, so an alias bomb stops here,
    after at most `MAX_VALUES` steps)."""
    stack: list[tuple[Any, int, str]] = [(doc, 0, "")]
    seen = 0
    while stack:
        node, depth, at = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return "(top level)", f"more than {MAX_VALUES} values (YAML aliases?): too large"
        if depth > MAX_DEPTH:
            return at, f"nested deeper than {MAX_DEPTH} levels: not a search space"
        if isinstance(node, Mapping):
            for key, value in node.items():
                if not isinstance(key, str):
                    return at or "(top level)", (
                        f"key {_show(key)} is not a string (YAML reads yes, 1 and ~ as a "
                        "boolean, a number and null): quote it"
                    )
                stack.append((value, depth + 1, f"{at}.{key}" if at else key))
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1, f"{at}[{i}]") for i, v in enumerate(node))
    return None


def parse_space(doc: Any, source: str) -> SearchSpace:
    """Validate a search-space document; every problem is reported at once."""
    if not isinstance(doc, Mapping):
        raise SpaceError(
            source, [("(top level)", f"expected a mapping of fields (got {type(doc).__name__})")]
        )
    shape = _shape_problem(doc)
    if shape:
        raise SpaceError(source, [shape])
    try:
        space = SearchSpace.model_validate(doc)
    except ValidationError as exc:
        raise SpaceError(
            source, [(_path(tuple(e["loc"])), _message(e)) for e in exc.errors()]
        ) from None
    problems = _cross_checks(space) or _contract_checks(space)
    if problems:
        raise SpaceError(source, problems)
    return space


class _Loader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (YAML keeps the last silently:
    a second `learning_rate:` would drop the first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: overriding is its use
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                again = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader says so below
                continue
            if again:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {_show(key)} is given twice in one mapping; YAML would keep the last",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise SpaceError(
            source, [("(file)", f"not found; write one (see {__name__}) or pass --space")]
        )
    if not path.is_file():
        raise SpaceError(source, [("(file)", "not a file; pass the search space's YAML file")])
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpaceError(
                source, [("(file)", f"{size} bytes; a search space is at most {MAX_FILE_BYTES}")]
            )
    except OSError as exc:
        raise SpaceError(source, [("(file)", f"cannot be read: {exc.strerror or exc}")]) from None
    try:
        too_deep = f"nested deeper than {MAX_DEPTH} levels: not a search space"
        doc = read_yaml(path, _Loader, too_deep)
    except YamlFileError as exc:
        raise SpaceError(source, [("(file)", str(exc))]) from None
    return parse_space(doc, source)
