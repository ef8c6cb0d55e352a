"""The onnxruntime-extensions fallback route for Python kernels.

Used only when the kernel host cannot be built; forced here to keep it working.
"""

from __future__ import annotations

import pytest

from opbridge.demo import _seeds
from opbridge.runtime import _ortx, _session


@pytest.fixture
def fallback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _ortx.available():
        pytest.fail(f"onnxruntime-extensions is a test dependency: {_ortx.unavailable_reason()}")
    monkeypatch.setattr(_session, "kernel_provider", lambda: _ortx)


@pytest.mark.parametrize("scenario", [_seeds.group_norm, _seeds.add_and_round])
def test_seed_scenarios_on_fallback(fallback_only: None, scenario) -> None:  # type: ignore[no-untyped-def]
    report = scenario("dynamo")
    assert report.passed, str(report)
    assert "onnxruntime-extensions (fallback)" in report.session
