"""Deployment without Python: opbridge build -o DIR, then a C++ program on ONNX Runtime.

The example in examples/deploy/ (shown in the README) end to end: export a model with
a declared op, build its C++ kernel (which reads the node's attributes with
``opbridge::Attribute``) into a directory, compile a C++ program against ONNX
Runtime's C++ API and the shared library from the onnxruntime wheel, and run it.
"""

from __future__ import annotations

import os
import pathlib
import re
import runpy
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from native_helpers import make_session, single_node_model
from onnx import TensorProto
from ort_runtime import ort_runtime_library

import opbridge.native as native
from opbridge.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "deploy"
F32 = TensorProto.FLOAT


@pytest.fixture(scope="module")
def scale_shift_lib(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    deploy = tmp_path_factory.mktemp("deploy")
    code = main(["build", "scale_shift", str(EXAMPLE / "scale_kernel.cc"), "-o", str(deploy)])
    assert code == 0
    library = deploy / "libscale_shift.so"
    assert library.is_file()
    return library


def test_cpp_program_runs_the_exported_model(scale_shift_lib, tmp_path, ort_headers):
    model = tmp_path / "model.onnx"
    runpy.run_path(str(EXAMPLE / "export_model.py"))["main"](str(model))
    node = next(n for n in onnx.load(str(model)).graph.node if n.domain == "example")
    assert node.op_type == "ScaleShift"
    assert {a.name for a in node.attribute} == {"factor", "shift"}

    runtime, version = ort_runtime_library()
    libdir = tmp_path / "ort"
    libdir.mkdir()
    (libdir / "libonnxruntime.so.1").symlink_to(runtime)  # the library's SONAME
    program = tmp_path / "run_model"
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    assert cxx is not None, "the C++ consumer test needs g++"
    subprocess.run(
        [
            cxx, "-std=c++17", "-O1", str(EXAMPLE / "run_model.cc"), f"-I{ort_headers}",
            f"-L{libdir}", "-l:libonnxruntime.so.1", f"-Wl,-rpath,{libdir}", "-o", str(program),
        ],
        check=True,
        timeout=300,
    )  # fmt: skip
    # No Python anywhere in the process: the program, ONNX Runtime and the kernel library.
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    done = subprocess.run(
        [str(program), str(model), str(scale_shift_lib), "5"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"onnxruntime {version}: {done.stderr}"
    x = np.arange(5, dtype=np.float32)
    expected = np.maximum(x - 1, 0) * 2.5 + 3
    np.testing.assert_allclose([float(v) for v in done.stdout.split()], expected)


def test_readme_shows_the_tested_example() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:cpp|c\+\+)\n(.*?)```", readme, re.DOTALL)
    assert (EXAMPLE / "scale_kernel.cc").read_text() in blocks
    assert "opbridge build scale_shift" in readme and "-o deploy/" in readme


def _scale_shift_session(library: pathlib.Path, **attrs: object):  # type: ignore[no-untyped-def]
    model = single_node_model("ScaleShift", "example", [("X", F32)], [("Y", F32)], **attrs)
    return make_session(model, library)


def test_attribute_helper_reads_required_and_optional(scale_shift_lib) -> None:
    x = np.array([1.0, -2.0], np.float32)
    session = _scale_shift_session(scale_shift_lib, factor=3.0)
    np.testing.assert_allclose(session.run(None, {"X": x})[0], x * 3)
    session = _scale_shift_session(scale_shift_lib, factor=3.0, shift=2)
    np.testing.assert_allclose(session.run(None, {"X": x})[0], x * 3 + 2)


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({}, "example::ScaleShift: required attribute 'factor' (float) is missing"),
        ({"factor": 2}, "attribute 'factor' must be of type float, the node has a int"),
        ({"factor": 1.0, "shift": 0.5}, "'shift' must be of type int, the node has a float"),
        ({"factor": "x"}, "attribute 'factor' must be of type float, the node has a string"),
    ],
)  # fmt: skip
def test_attribute_helper_names_the_attribute(scale_shift_lib, attrs, message) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        _scale_shift_session(scale_shift_lib, **attrs)


PROBE = r"""
#include <opbridge/ort_kernel.h>

#include <numeric>

struct Probe {
  std::string s;
  std::vector<float> fs;
  std::vector<int64_t> is;
  Probe(const OrtApi*, const OrtKernelInfo* info)
      : s(opbridge::Attribute<std::string>(info, "s", "default")),
        fs(opbridge::Attribute<std::vector<float>>(info, "fs", {})),
        is(opbridge::Attribute<std::vector<int64_t>>(info, "is")) {}
  void Compute(const opbridge::Tensor<float>& x, opbridge::Tensor<float>& y) const {
    float* out = y.Allocate({3});
    out[0] = static_cast<float>(s.size());
    out[1] = std::accumulate(fs.begin(), fs.end(), 0.0f);
    out[2] = static_cast<float>(std::accumulate(is.begin(), is.end(), int64_t{0}));
  }
};

OPBRIDGE_REGISTER_OPS(ops) { ops.Add<Probe>("example.probe", "Probe"); }
"""


def test_attribute_helper_reads_strings_and_lists(fresh_cache) -> None:
    library = native.load_inline("attr_probe", PROBE)
    x = np.zeros(1, np.float32)

    def run(**attrs: object) -> list[float]:
        model = single_node_model("Probe", "example.probe", [("X", F32)], [("Y", F32)], **attrs)
        return list(make_session(model, library).run(None, {"X": x})[0])

    assert run(s="hello", fs=[0.5, 1.5], **{"is": [1, 2, 3]}) == [5.0, 2.0, 6.0]
    assert run(**{"is": [0]}) == [7.0, 0.0, 0.0]  # s "default", no floats
    with pytest.raises(Exception, match=re.escape("required attribute 'is' (ints) is missing")):
        run(s="x")
    wrong_list = "'fs' must be of type floats, the node has a ints"
    with pytest.raises(Exception, match=re.escape(wrong_list)):
        run(fs=[1, 2], **{"is": [1]})
