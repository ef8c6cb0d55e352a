"""``opbridge demo``: the seed tutorials' scenarios, end to end, with both exporters."""

from __future__ import annotations

import argparse
import time

from opbridge.cli._output import error, say

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from opbridge.demo import SCENARIOS, run_scenario

    exporters = ("dynamo", "torchscript") if args.exporter == "both" else (args.exporter,)
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if not chosen:
        names = ", ".join(s.name for s in SCENARIOS)
        error("demo", f"no scenario named {', '.join(args.only)}; choose from {names}")
        return 2
    passed = failed = skipped = 0
    total = len(chosen) * len(exporters)
    for i, scenario in enumerate(chosen):
        for j, exporter in enumerate(exporters):
            step = i * len(exporters) + j + 1
            say(
                f"[{step}/{total}] seed {scenario.seed} {scenario.name} "
                f"({scenario.description}), {exporter} exporter ..."
            )
            start = time.perf_counter()
            result = run_scenario(scenario, exporter)
            took = time.perf_counter() - start
            if result.skipped:
                skipped += 1
                say(f"    skipped: {result.skipped}")
            elif result.passed:
                passed += 1
                assert result.report is not None
                say(*("    " + line for line in str(result.report).splitlines()))
                say(f"    ok in {took:.2f}s")
            else:
                failed += 1
                detail = result.error or str(result.report)
                say(f"    FAILED in {took:.2f}s: {detail}")
    say(f"demo: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 0 if failed == 0 else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the seed tutorials' scenarios end to end")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript", "both"), default="both")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this scenario (repeatable)",
    )
    parser.set_defaults(func=_run)
