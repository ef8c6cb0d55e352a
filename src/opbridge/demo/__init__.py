"""The seed tutorials' scenarios, end to end (``opbridge demo``)."""

from opbridge.demo._seeds import SCENARIOS, Scenario, ScenarioResult, run_scenario

__all__ = ["SCENARIOS", "Scenario", "ScenarioResult", "run_scenario"]
