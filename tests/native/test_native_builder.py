"""build_library / load_inline: cache, diagnostics, header checks, registration errors."""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
from native_helpers import make_session, single_node_model
from onnx import TensorProto

import opbridge.native as native
from opbridge.cli import build as build_cli
from opbridge.native._build import build_stats

F32 = TensorProto.FLOAT

# A kernel whose result depends on a compile-time constant (-DOFFSET) and on a value
# from a local header, so tests can tell which build they are running.
SCALE_SOURCE = textwrap.dedent(
    """\
    #include <opbridge/ort_kernel.h>
    #include "scale_factor.h"

    #ifndef OFFSET
    #define OFFSET 0.0f
    #endif

    static Ort::Status Scale(const opbridge::Tensor<float>& x, opbridge::Tensor<float>& y) {
      float* out = y.Allocate(x.Shape());
      for (int64_t i = 0; i < x.NumberOfElement(); ++i) {
        out[i] = x.Data()[i] * kScaleFactor + OFFSET;
      }
      return Ort::Status{nullptr};
    }

    OPBRIDGE_REGISTER_OPS(ops) { ops.Add("test.scale", "Scale", Scale); }
    """
)

INLINE_SOURCE = textwrap.dedent(
    """\
    #include <opbridge/ort_kernel.h>

    // Throwing style: errors become ORT statuses carrying the op name.
    static void Twice(const opbridge::Tensor<float>& x, opbridge::Tensor<float>& y) {
      OPBRIDGE_ENFORCE(x.Shape().size() == 1, "x must be 1-D, got ", opbridge::ShapeStr(x.Shape()));
      float* out = y.Allocate(x.Shape());
      for (int64_t i = 0; i < x.NumberOfElement(); ++i) out[i] = 2.0f * x.Data()[i];
    }

    OPBRIDGE_REGISTER_OPS(ops) { ops.Add("test.inline", "Twice", Twice); }
    """
)


def _scale_model() -> bytes:
    return single_node_model("Scale", "test.scale", [("X", F32)], [("Y", F32)])


def _run_scale(lib: pathlib.Path) -> np.ndarray:
    session = make_session(_scale_model(), lib)
    return session.run(None, {"X": np.arange(3, dtype=np.float32)})[0]


def _write_scale_sources(directory: pathlib.Path, factor: str) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "scale_factor.h").write_text(f"constexpr float kScaleFactor = {factor};\n")
    src = directory / "scale.cc"
    src.write_text(SCALE_SOURCE)
    return src


def test_cache_miss_then_hit_and_header_edits_rebuild(fresh_cache, tmp_path, capfd):
    src = _write_scale_sources(tmp_path / "src", "3.0f")
    before = build_stats()
    first = native.build_library("scale", [src])
    after_first = build_stats()
    assert after_first.compiles == before.compiles + 1
    assert first.is_file() and fresh_cache in first.parents
    # Builds over a second report progress on stderr.
    assert "opbridge: building scale ... done in" in capfd.readouterr().err
    mtime = first.stat().st_mtime_ns

    second = native.build_library("scale", [src])
    after_second = build_stats()
    assert second == first
    assert after_second.compiles == after_first.compiles  # no recompilation
    assert after_second.hits == after_first.hits + 1
    assert first.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(_run_scale(first), [0.0, 3.0, 6.0])

    # Editing an included header (not a listed source) must produce a new library.
    (src.parent / "scale_factor.h").write_text("constexpr float kScaleFactor = 5.0f;\n")
    third = native.build_library("scale", [src])
    assert third != first and first.is_file()  # the old file is never overwritten
    assert build_stats().compiles == after_second.compiles + 1
    np.testing.assert_array_equal(_run_scale(third), [0.0, 5.0, 10.0])

    # Flags are part of the key.
    fourth = native.build_library("scale", [src], extra_cflags=["-DOFFSET=1.0f"])
    assert fourth not in (first, third)
    np.testing.assert_array_equal(_run_scale(fourth), [1.0, 6.0, 11.0])


def test_load_inline_runs_in_ort_and_reports_kernel_errors(fresh_cache):
    lib = native.load_inline("inline_twice", INLINE_SOURCE)
    model = single_node_model("Twice", "test.inline", [("X", F32)], [("Y", F32)])
    session = make_session(model, lib)
    (y,) = session.run(None, {"X": np.array([1.0, -2.0], np.float32)})
    np.testing.assert_array_equal(y, [2.0, -4.0])
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument) as info:
        session.run(None, {"X": np.ones((2, 2), np.float32)})
    assert "test.inline::Twice: x must be 1-D, got [2, 2]" in str(info.value)
    # Same text again: served from the cache.
    compiles = build_stats().compiles
    assert native.load_inline("inline_twice", INLINE_SOURCE) == lib
    assert build_stats().compiles == compiles


def test_library_exports_only_register_custom_ops_and_needs_no_onnxruntime(kernel_lib):
    nm = shutil.which("nm")
    readelf = shutil.which("readelf")
    if nm is None or readelf is None:
        pytest.skip("binutils (nm, readelf) not installed")
    out = subprocess.run(
        [nm, "-D", "--defined-only", str(kernel_lib)], capture_output=True, text=True, check=True
    ).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert exported == {"RegisterCustomOps"}
    dynamic = subprocess.run(
        [readelf, "-d", str(kernel_lib)], capture_output=True, text=True, check=True
    ).stdout
    needed = [line for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert needed and not any("onnxruntime" in line for line in needed)


def test_compile_error_reports_file_and_line(fresh_cache):
    source = "#include <opbridge/ort_kernel.h>\n\nint broken() {\n  return undeclared_name;\n}\n"
    with pytest.raises(native.BuildError) as info:
        native.load_inline("broken", source)
    message = str(info.value)
    src = next((fresh_cache / "build" / "inline").glob("broken-*.cc"))
    # The first line is the compiler's own first error, with file and line.
    first = message.splitlines()[0]
    assert first.startswith(f"broken: {src}:4:") and "undeclared_name" in first
    assert f"{src}:4:" in info.value.compiler_output


def test_missing_registration_list_fails_at_link_time(fresh_cache):
    source = "#include <opbridge/ort_kernel.h>\nint unused() { return 1; }\n"
    with pytest.raises(native.BuildError, match="OPBRIDGE_REGISTER_OPS"):
        native.load_inline("no_register", source)


def test_missing_compiler_and_bad_arguments(fresh_cache, tmp_path, monkeypatch):
    src = tmp_path / "x.cc"
    src.write_text("int x;\n")
    with pytest.raises(native.BuildError, match="invalid library name"):
        native.build_library("bad name", [src])
    with pytest.raises(native.BuildError, match="not found"):
        native.build_library("missing", [tmp_path / "nope.cc"])
    with pytest.raises(native.BuildError, match="no sources"):
        native.build_library("empty", [])
    monkeypatch.setenv("CXX", "definitely-not-a-compiler-xyz")
    with pytest.raises(native.BuildError, match="install g\\+\\+"):
        native.build_library("nocxx", [src])


def test_bad_include_dir_override(fresh_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("OPBRIDGE_ORT_INCLUDE_DIR", str(tmp_path))
    with pytest.raises(native.BuildError, match="OPBRIDGE_ORT_INCLUDE_DIR"):
        native.load_inline("inline_twice", INLINE_SOURCE)


def test_header_newer_than_runtime_is_refused_cleanly(
    fresh_cache, tmp_path, monkeypatch, ort_headers, kernel_lib
):
    # Headers claiming an API version this onnxruntime does not have: the library must
    # report it through RegisterCustomOps instead of crashing on a null OrtApi.
    fake = tmp_path / "fake-headers"
    shutil.copytree(ort_headers, fake)
    header = fake / "onnxruntime_c_api.h"
    text = header.read_text()
    version = native.header_api_version(ort_headers)
    header.write_text(
        text.replace(f"#define ORT_API_VERSION {version}", "#define ORT_API_VERSION 999")
    )
    assert native.header_api_version(fake) == 999
    monkeypatch.setenv("OPBRIDGE_ORT_INCLUDE_DIR", str(fake))
    lib = native.load_inline("inline_twice", INLINE_SOURCE)
    options = ort.SessionOptions()
    with pytest.raises(Exception, match="ORT_API_VERSION 999") as info:
        options.register_custom_ops_library(str(lib))
    assert ort.__version__ in str(info.value)
    # The process is fine and other libraries still load.
    inputs = [("X", F32), ("Y", F32)]
    model = single_node_model("CustomOpOne", "test.customop", inputs, [("Z", F32)])
    (z,) = make_session(model, kernel_lib).run(
        None, {"X": np.ones(2, np.float32), "Y": np.ones(2, np.float32)}
    )
    np.testing.assert_array_equal(z, [2.0, 2.0])


BAD_REGISTRATION_SOURCE = textwrap.dedent(
    """\
    #include <opbridge/ort_kernel.h>
    #include <cstdlib>
    #include <cstring>
    #include <stdexcept>

    static Ort::Status Copy(const opbridge::Tensor<float>& x, opbridge::Tensor<float>& y) {
      float* out = y.Allocate(x.Shape());
      for (int64_t i = 0; i < x.NumberOfElement(); ++i) out[i] = x.Data()[i];
      return Ort::Status{nullptr};
    }
    static Ort::Status CopyTwo(const opbridge::Tensor<float>& x, const opbridge::Tensor<float>&,
                               opbridge::Tensor<float>& y) {
      return Copy(x, y);
    }

    // The case is picked at registration time so one library covers every mistake.
    OPBRIDGE_REGISTER_OPS(ops) {
      const char* env = std::getenv("OPBRIDGE_TEST_REGISTRATION");
      const std::string mode = env ? env : "";
      if (mode == "empty-domain") ops.Add("", "Copy", Copy);
      if (mode == "onnx-domain") ops.Add("ai.onnx", "Copy", Copy);
      if (mode == "empty-name") ops.Add("test.bad", "", Copy);
      if (mode == "null-function") ops.Add("test.bad", "Copy", decltype(&Copy){nullptr});
      if (mode == "bad-range") ops.Add("test.bad", "Copy", Copy, 5, 2);
      if (mode == "duplicate") ops.Add("test.bad", "Copy", Copy).Add("test.bad", "Copy", Copy);
      if (mode == "arity") ops.Add("test.bad", "Copy", Copy).Add("test.bad", "Copy", CopyTwo);
      if (mode == "throws") throw std::runtime_error("registration list exploded");
      if (mode == "ok") ops.Add("test.bad", "Copy", Copy);
    }
    """
)


@pytest.fixture(scope="module")
def bad_registration_lib(tmp_path_factory, ort_headers):
    cache = tmp_path_factory.mktemp("bad-reg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPBRIDGE_CACHE_DIR", str(cache))
        mp.setenv("OPBRIDGE_ORT_INCLUDE_DIR", str(ort_headers))
        return native.load_inline("bad_registration", BAD_REGISTRATION_SOURCE)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("", "registration list is empty"),
        ("empty-domain", "need their own domain"),
        ("onnx-domain", "need their own domain"),
        ("empty-name", "empty op name"),
        ("null-function", "kernel function is null"),
        ("bad-range", r"invalid opset range \[5, 2\]"),
        ("duplicate", "registered twice for the same element types"),
        ("arity", "different numbers of inputs"),
        ("throws", "registration list exploded"),
    ],
)
def test_bad_registration_is_an_error_not_a_crash(bad_registration_lib, monkeypatch, mode, message):
    monkeypatch.setenv("OPBRIDGE_TEST_REGISTRATION", mode)
    options = ort.SessionOptions()
    with pytest.raises(Exception, match=message):
        options.register_custom_ops_library(str(bad_registration_lib))


def test_registration_is_idempotent_across_session_options(bad_registration_lib, kernel_lib):
    # Run last in this module: once a registration succeeds the list is fixed for the
    # process. Many SessionOptions, and two libraries in one session, all work.
    os.environ["OPBRIDGE_TEST_REGISTRATION"] = "ok"
    try:
        model = single_node_model("Copy", "test.bad", [("X", F32)], [("Y", F32)])
        sessions = [make_session(model, bad_registration_lib) for _ in range(4)]
        x = np.arange(4, dtype=np.float32)
        for session in sessions:
            np.testing.assert_array_equal(session.run(None, {"X": x})[0], x)
        both = make_session(model, bad_registration_lib, kernel_lib)
        np.testing.assert_array_equal(both.run(None, {"X": x})[0], x)
    finally:
        del os.environ["OPBRIDGE_TEST_REGISTRATION"]


def test_cli_build_prints_the_library_path(fresh_cache, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="opbridge")
    build_cli.register(parser.add_subparsers())
    src = _write_scale_sources(tmp_path / "src", "2.0f")

    args = parser.parse_args(["build", "scale", str(src)])
    assert args.func(args) == 0
    cached = pathlib.Path(capsys.readouterr().out.strip())
    assert cached == native.build_library("scale", [src])
    assert fresh_cache in cached.parents

    # -o DIR: a stable, deployable name outside the cache.
    out_dir = tmp_path / "deploy" / "lib"
    args = parser.parse_args(["build", "scale", str(src), "-o", str(out_dir)])
    assert args.func(args) == 0
    deployed = pathlib.Path(capsys.readouterr().out.strip())
    assert deployed == (out_dir / "libscale.so").resolve()
    assert deployed.read_bytes() == cached.read_bytes()
    np.testing.assert_array_equal(_run_scale(deployed), [0.0, 2.0, 4.0])


def test_cli_build_error_is_a_build_error(fresh_cache, tmp_path, capsys):
    src = tmp_path / "bad.cc"
    src.write_text("#include <opbridge/ort_kernel.h>\n\nthis is not C++\n")
    parser = argparse.ArgumentParser(prog="opbridge")
    build_cli.register(parser.add_subparsers())
    args = parser.parse_args(["build", "bad", str(src), "-I", str(tmp_path), "--cflag=-Wall"])
    with pytest.raises(native.BuildError, match=f"{src}:3:"):
        args.func(args)
    # The handler printed the compiler's diagnostics before the summary line.
    assert f"{src}:3:" in capsys.readouterr().err


def test_opbridge_main_reports_build_errors_with_file_and_line(fresh_cache, tmp_path, capsys):
    from opbridge.cli import main

    src = tmp_path / "bad.cc"
    src.write_text("#include <opbridge/ort_kernel.h>\nint f() { return missing; }\n")
    assert main(["build", "bad", str(src)]) == 1
    err = capsys.readouterr().err
    assert f"{src}:2:" in err and "missing" in err


def test_concurrent_processes_build_once(fresh_cache, tmp_path):
    src = _write_scale_sources(tmp_path / "src", "2.0f")
    script = textwrap.dedent(
        f"""\
        import sys
        from opbridge.native._build import build_library, build_stats
        path = build_library("scale", [{str(src)!r}])
        print(path, build_stats().compiles)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert results[0][0] == results[1][0]
    # The file lock makes the second process wait and then hit the cache.
    assert sorted(int(r[1]) for r in results) == [0, 1]
    np.testing.assert_array_equal(_run_scale(pathlib.Path(results[0][0])), [0.0, 2.0, 4.0])
