"""Fixtures shared across test files."""

from __future__ import annotations

from pathlib import Path

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


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier trained by `python -m workloads.train` on `serve_support.make_frame`,
    shared by the server tests (one training per test process)."""
    from tests.serve_support import make_frame, train_model

    return train_model(tmp_path_factory.mktemp("serve-model"), make_frame(300), "label")


@pytest.fixture(scope="session")
def records() -> list[dict]:
    from tests.serve_support import make_frame

    frame = make_frame(20, seed=1).drop(columns=["label"])
    recs = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [{k: (bool(v) if k == "active" else v) for k, v in r.items()} for r in recs]


@pytest.fixture(scope="module")
def server(model_dir: Path):
    """A one-worker server on loopback serving `model_dir`, per test module."""
    from tests.serve_support import Server

    srv = Server(model_dir).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fixed_constant_pool():
    """For the Hypothesis fuzz modules (`pytestmark = pytest.mark.usefixtures(...)`).
    Hypothesis mixes into its draws the constants of every project module imported so far
    (`providers._get_local_constants`, read from `sys.modules`), so even derandomized the
    examples depend on which tests ran earlier in the process: after the serving tests, whose
    modules hold "\\r\\n", a key with a line break came up that a run alone never drew. The
    pool is emptied for the module, so every run draws the same examples (odd strings are in
    the modules' own pools on purpose)."""
    from hypothesis.internal.conjecture import providers

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(providers, "_get_local_constants", providers.Constants, raising=False)
        providers.CONSTANTS_CACHE.cache.clear()  # filtered copies of the pool, per type
        yield
    providers.CONSTANTS_CACHE.cache.clear()
