"""Fixtures shared across test files."""

from __future__ import annotations

import pytest


@pytest.fixture
def aws_env(monkeypatch):
    """Fake credentials for moto and Stubber: no test may reach a real account."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
