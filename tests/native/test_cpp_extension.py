"""The seed's PyTorch C++ extension: build, eager results, export with both exporters,
and the exported model on opbridge's native testgroupnorm kernel.

Each form runs in a child process (see cpp_extension_worker.py); this module checks
what the child wrote against torch.nn.functional.group_norm.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

WORKER = pathlib.Path(__file__).resolve().parent / "cpp_extension_worker.py"
FORMS = {
    "register_operators": "mynamespace::custom_group_norm",
    "torch_library": "mynamespace_lib::custom_group_norm",
}


@pytest.fixture(scope="module", params=list(FORMS))
def run(request, tmp_path_factory, kernel_lib):
    """Builds and exercises one form in a child process; returns (form, report, arrays)."""
    form = request.param
    out = tmp_path_factory.mktemp(form)
    proc = subprocess.run(
        [sys.executable, str(WORKER), form, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"worker for {form} failed:\n{proc.stdout}\n{proc.stderr[-5000:]}")
    report = json.loads((out / "report.json").read_text())
    arrays = dict(np.load(out / "arrays.npz"))
    return form, report, arrays


def _group_norm(x, groups, scale, bias, eps) -> np.ndarray:
    return torch.nn.functional.group_norm(
        torch.from_numpy(x), int(groups), torch.from_numpy(scale), torch.from_numpy(bias), eps
    ).numpy()


def test_registers_the_expected_op_name(run):
    form, report, _ = run
    assert report["name"] == FORMS[form]


def test_eager_matches_torch_group_norm(run):
    _, _, arrays = run
    cases = sorted({k.split("_")[0] for k in arrays if k.startswith("eager")})
    assert len(cases) == 4
    for case in cases:
        expected = _group_norm(
            arrays[f"{case}_x"],
            arrays[f"{case}_groups"],
            arrays[f"{case}_scale"],
            arrays[f"{case}_bias"],
            float(arrays[f"{case}_eps"]),
        )
        np.testing.assert_allclose(arrays[f"{case}_y"], expected, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise(run):
    _, report, _ = run
    errors = report["errors"]
    assert "rank >= 2" in errors["rank"]
    assert "divisible by num_groups" in errors["groups"]
    assert "scale and bias must have shape [4]" in errors["scale"]
    assert "must be float32" in errors["dtype"]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_runs_on_native_kernel(run, exporter):
    _, report, arrays = run
    result = report["exports"][exporter]
    assert "failure" not in result, result.get("failure")
    # One custom node, as the seed's symbolic writes it: mydomain::testgroupnorm, eps 0.
    assert result["nodes"] == [
        {"domain": "mydomain", "op_type": "testgroupnorm", "attributes": {"epsilon": 0.0}}
    ]
    assert result["opsets"]["mydomain"] == 2
    assert result["inputs"] == ["X", "num_groups", "scale", "bias"]
    expected = _group_norm(arrays["seed_X"], 2, arrays["seed_scale"], arrays["seed_bias"], 0.0)
    np.testing.assert_allclose(arrays["seed_torch_op"], expected, rtol=1e-5, atol=1e-6)
    for route in ("session", "plain"):
        np.testing.assert_allclose(
            arrays[f"{exporter}_{route}"], expected, rtol=1e-5, atol=1e-6, err_msg=route
        )
