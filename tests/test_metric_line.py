"""The metric line: one format, read back by the parser and by SageMaker's regexes."""

import math
import re

import pytest

from workloads.training.metric_line import (
    SAGEMAKER_REGEX_LIMIT,
    Metric,
    format_metric,
    metric_regex,
    parse_metric_lines,
    sagemaker_metric_definitions,
)


@pytest.mark.parametrize("value", [0.0, 1.0, -2.5, 1e-05, 3.14159e12, 0.41237, -0.0, 123456789.0])
def test_every_value_round_trips_through_the_parser_and_the_sagemaker_regex(value):
    for epoch in (None, 7):
        line = format_metric("validation_loss", value, epoch)
        (metric,) = parse_metric_lines(f"2026-11-30T08:00:00Z {line}\n")
        assert metric == Metric("validation_loss", value, epoch)
        match = re.search(metric_regex("validation_loss"), line)
        assert match and float(match.group(1)) == value


def test_non_finite_values_and_noise_lines():
    text = "\n".join(
        [
            "train[rank 0] starting",
            format_metric("auc", math.nan, 1),
            format_metric("loss", math.inf),
            format_metric("loss", -math.inf),
            "#metric bad name=1",
            "#metric x=notanumber",
        ]
    )
    got = list(parse_metric_lines(text))
    assert [m.name for m in got] == ["auc", "loss", "loss"]
    assert math.isnan(got[0].value) and got[1].value == math.inf and got[2].value == -math.inf


def test_regex_does_not_match_a_metric_whose_name_extends_another():
    line = format_metric("loss_ratio", 2.0)
    assert re.search(metric_regex("loss"), line) is None


def test_sagemaker_definitions_are_unique_and_within_the_limit():
    defs = sagemaker_metric_definitions(["validation_loss", "accuracy", "accuracy", "a" * 128])
    assert [d["Name"] for d in defs] == ["validation_loss", "accuracy", "a" * 128]
    assert all(len(d["Regex"]) <= SAGEMAKER_REGEX_LIMIT for d in defs)


@pytest.mark.parametrize("name", ["", "1abc", "has space", "a=b", "a" * 129])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="metric name"):
        format_metric(name, 1.0)
