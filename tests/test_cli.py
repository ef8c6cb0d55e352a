"""The opbridge command line, run in-process."""

from __future__ import annotations

import subprocess
import sys
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

    # --import is accepted before and after the sub-command.
    assert main(["inspect", str(out), "--import", str(models_file)]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if "cli.test::Softsign" in ln)
    assert row.split()[1] == "1" and "Python kernel (torch)" in row

    result = tmp_path / "out.npz"
    assert main(["run", f"--import={models_file}", str(out), "-o", str(result)]) == 0
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
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("nowhere::Unknown"))
    assert row.split()[1:] == ["1", "NO", "KERNEL"]
    assert "--import MODULE" in out and "--library" in out
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere::Unknown" in err
    assert "--import MODULE" in err and "--library" in err and "--seed-kernels" in err


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
        (["run", "/no/such/model.onnx"], "no such file '/no/such/model.onnx'"),
        (["inspect", "/no/such/model.onnx"], "no such file '/no/such/model.onnx'"),
        (["inspect", "{models}"], "is not an ONNX model"),
        (["run", "{models}"], "is not an ONNX model"),
        (["--import", "/no/such/mod.py", "inspect", "x.onnx"], "--import /no/such/mod.py"),
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


def test_version_names_the_stack(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for dist in ("opbridge", "torch 2.", "onnx 1.", "onnxruntime 1."):
        assert dist in out


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """Runs the CLI in a fresh process: no op declared by other tests."""
    code = "import sys; from opbridge.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300
    )


def test_seed_kernels_are_opt_in(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    node = helper.make_node("CustomOpOne", ["x", "x"], ["y"], domain="test.customop")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("test.customop", 1)]
    )
    model.ir_version = 10
    path = tmp_path / "seed.onnx"
    onnx.save(model, str(path))
    # A node named like a seed op is never bound to opbridge's kernels unasked.
    done = _cli("inspect", str(path))
    assert done.returncode == 1 and "NO KERNEL" in done.stdout, done
    done = _cli("inspect", str(path), "--seed-kernels")
    assert done.returncode == 0 and "native library" in done.stdout, done
    done = _cli("run", str(path), "--seed-kernels")
    assert done.returncode == 0 and "float32[2]" in done.stdout, done
    assert done.stderr == ""


def test_export_is_quiet_but_keeps_the_users_warnings(models_file: Path, tmp_path: Path) -> None:
    noisy = tmp_path / "noisy_models.py"
    noisy.write_text(
        models_file.read_text()
        + textwrap.dedent(
            """
            import warnings

            class Noisy(Model):
                def forward(self, x):
                    warnings.warn("the user's own warning")
                    return super().forward(x)

            def make_noisy():
                return Noisy(), (torch.randn(2, 3),)
            """
        )
    )
    done = _cli("export", f"{noisy}:make_noisy", "-o", str(tmp_path / "n.onnx"))
    assert done.returncode == 0, done.stderr
    assert "torchvision" not in done.stderr and "LeafSpec" not in done.stderr
    assert "the user's own warning" in done.stderr


def test_demo_skips_a_scenario_this_machine_cannot_build_and_says_why(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The adopted C++ op is the user's own extension: torch needs a compiler to build it.
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert main(["demo", "--only", "adopted_cpp_op"]) == 0
    out = capsys.readouterr().out
    assert "skipped: building a torch C++ extension needs a C++ compiler" in out
    assert "demo: 0 passed, 0 failed, 2 skipped" in out
