"""The opbridge command line, run in-process."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from opbridge.cli import main

MODELS = textwrap.dedent(
    """
    import torch
    import opbridge

    @opbridge.custom_op("clitest::softsign", domain="cli.test")
    def softsign(x: torch.Tensor) -> torch.Tensor:
        return x / (1 + x.abs())

    class Model(torch.nn.Module):
        def forward(self, x):
            return softsign(x) * 2

    def make_model():
        return Model()

    def make_model_with_inputs():
        return Model(), (torch.randn(2, 5),)

    def not_a_model():
        return 42
    """
)


@pytest.fixture(scope="module")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "clitest_models.py"
    path.write_text(MODELS)
    return path


def test_export_inspect_run(models_file: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "m.onnx"
    assert (
        main(["export", f"{models_file}:make_model", "--input-shape", "3,4", "-o", str(out)]) == 0
    )
    assert "cli.test::Softsign" in capsys.readouterr().out
    assert onnx.load(str(out)).graph.node[0].domain == "cli.test"

    assert main(["--import", str(models_file), "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cli.test::Softsign x1" in text and "Python kernel (torch)" in text

    result = tmp_path / "out.npz"
    assert main(["--import", str(models_file), "run", str(out), "-o", str(result)]) == 0
    assert "float32[3, 4]" in capsys.readouterr().out
    assert np.load(result)[onnx.load(str(out)).graph.output[0].name].shape == (3, 4)


def test_inspect_reports_missing_kernel(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from onnx import TensorProto, helper

    node = helper.make_node("Unknown", ["x"], ["y"], domain="nowhere")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("nowhere", 1)]
    )
    path = tmp_path / "unknown.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", str(path)]) == 1
    assert "nowhere::Unknown x1: NO KERNEL" in capsys.readouterr().out
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere::Unknown" in err


def test_verify_with_factory_inputs(models_file: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["verify", f"{models_file}:make_model_with_inputs", "--exporter", "torchscript"])
    assert code == 0
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "nocolon", "-o", "x.onnx"], "MODULE:FACTORY"),
        (["export", "/no/such/file.py:f", "-o", "x.onnx"], "no such file"),
        (["verify", "{models}:missing"], "has no attribute 'missing'"),
        (["verify", "{models}:not_a_model"], "not an nn.Module"),
        (["verify", "{models}:make_model"], "--input-shape"),
        (["verify", "{models}:make_model", "--input-shape", "a,b"], "bad --input-shape"),
        (["run", "/no/such/model.onnx"], "does not exist"),
    ],
)
def test_errors_are_one_line(models_file: Path, capsys, argv: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    argv = [a.replace("{models}", str(models_file)) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert message in err


def test_demo_one_scenario(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["demo", "--only", "inverse"]) == 0
    out = capsys.readouterr().out
    assert "demo: 2 passed, 0 failed" in out
    assert "PASSED" in out
    assert main(["demo", "--only", "nope"]) == 2


def test_quickstart_example_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    import runpy

    runpy.run_path(
        str(Path(__file__).parent.parent / "examples" / "quickstart.py"), run_name="__main__"
    )
    out = capsys.readouterr().out
    assert "mydomain::ScaledTanh" in out and out.count("PASSED") == 2
