"""The metric line: how `workloads.train` reports a metric, defined once.

Rank 0 prints every metric as one plain line on stdout (no logging prefix):

    #metric validation_loss=0.41237 epoch=3
    #metric accuracy=0.9512

Lines with `epoch=N` are reported after each epoch (tuning prunes on them); lines without
are the final metrics of the artifact. Every reader takes its pattern from here: the
SageMaker metric definitions (`sagemaker_metric_definitions`, each regex well under
SageMaker's 500-character cap), the tuning drivers and `mlinfra jobs logs`
(`parse_metric_lines`).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

PREFIX = "#metric"
# A metric name: what SageMaker and CloudWatch accept, and nothing a regex must escape
# except '.' and '-'.
NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_.:-]{0,127}"
_NAME = re.compile(NAME_PATTERN)  # fullmatch: `$` would let a trailing newline through
_VALUE = r"[-+]?(?:[0-9]+\.?[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf)"
_LINE = re.compile(
    rf"^{re.escape(PREFIX)} (?P<name>{NAME_PATTERN})=(?P<value>{_VALUE})"
    rf"(?: epoch=(?P<epoch>[0-9]+))?\s*$"
)
SAGEMAKER_REGEX_LIMIT = 500


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    epoch: int | None = None  # None: a final metric


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"metric name {name!r} must match {NAME_PATTERN} (a letter, then letters, "
            "digits, '_', '.', ':' or '-'; at most 128 characters)"
        )
    return name


def format_metric(name: str, value: float, epoch: int | None = None) -> str:
    check_name(name)
    value = float(value)
    text = repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else "inf")
    if value == -math.inf:
        text = "-inf"
    line = f"{PREFIX} {name}={text}"
    return line if epoch is None else f"{line} epoch={int(epoch)}"


def emit(metrics: dict[str, float], epoch: int | None = None, stream: TextIO | None = None) -> None:
    """Print one metric line per metric, flushed (a reader may be tailing the log)."""
    out = stream or sys.stdout
    for name, value in metrics.items():
        out.write(format_metric(name, value, epoch) + "\n")
    out.flush()


def parse_metric_lines(lines: str | Iterable[str]) -> Iterator[Metric]:
    """Every metric line in a log (other lines, and logging prefixes before '#metric', are
    skipped: CloudWatch and `kubectl logs` may add timestamps)."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    for raw in lines:
        at = raw.find(PREFIX)
        if at < 0:
            continue
        match = _LINE.match(raw[at:].rstrip("\r\n"))
        if match:
            epoch = match["epoch"]
            yield Metric(match["name"], float(match["value"]), int(epoch) if epoch else None)


def metric_regex(name: str) -> str:
    """The regex SageMaker applies to the job's log to find `name`; group 1 is the value.

    It matches both the per-epoch and the final lines: SageMaker keeps the time series, and
    its tuner reads the last value.
    """
    regex = f"{PREFIX} {re.escape(check_name(name))}=({_VALUE})"
    if len(regex) > SAGEMAKER_REGEX_LIMIT:  # cannot happen for a valid name; checked anyway
        raise ValueError(f"the regex for metric {name!r} is over {SAGEMAKER_REGEX_LIMIT} chars")
    return regex


def sagemaker_metric_definitions(names: Iterable[str]) -> list[dict[str, str]]:
    """`MetricDefinitions` for CreateTrainingJob / the SDK's `ModelTrainer` and tuner."""
    return [{"Name": name, "Regex": metric_regex(name)} for name in dict.fromkeys(names)]
