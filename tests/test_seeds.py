"""Every scenario of the seed tutorials, with both exporters (also ``opbridge demo``)."""

from __future__ import annotations

import pytest

from opbridge.demo import SCENARIOS
from tests.conftest import EXPORTERS


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_seed_scenario(scenario, exporter: str) -> None:  # type: ignore[no-untyped-def]
    report = scenario.run(exporter)
    assert report.passed, str(report)
