"""Kernel host: how it is built (exports, no libonnxruntime link, API version checks)."""

from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import subprocess
import sys

import onnxruntime
import pytest

from opbridge.native import _headers

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} (binutils) is needed to inspect the kernel host")
    return path


def test_only_the_two_entry_points_are_exported(host):
    if not sys.platform.startswith("linux"):
        pytest.skip("inspects an ELF shared object")
    out = subprocess.run(
        [_tool("nm"), "-D", "--defined-only", host.library_path()],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert exported == {"PyInit__host_ext", "RegisterCustomOps"}


def test_libonnxruntime_is_not_linked(host):
    if not sys.platform.startswith("linux"):
        pytest.skip("inspects an ELF shared object")
    out = subprocess.run(
        [_tool("readelf"), "-d", host.library_path()], capture_output=True, text=True, check=True
    ).stdout
    needed = [line for line in out.splitlines() if "(NEEDED)" in line]
    assert needed, out
    assert not any("onnxruntime" in line for line in needed), needed
    undefined = subprocess.run(
        [_tool("nm"), "-D", "--undefined-only", host.library_path()],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "OrtGetApiBase" not in undefined


def test_built_against_the_pinned_headers(host):
    ext = host._require()
    assert _headers.header_api_version(_headers.ort_include_dir()) == ext.ORT_API_VERSION


class _OrtApiBase(ctypes.Structure):
    _fields_ = [("GetApi", ctypes.c_void_p), ("GetVersionString", ctypes.c_void_p)]


def test_a_runtime_older_than_the_headers_is_refused_cleanly(host):
    """RegisterCustomOps gets an OrtApiBase that lacks the host's API version."""
    capi = pathlib.Path(onnxruntime.__file__).parent / "capi"
    (library,) = capi.glob("libonnxruntime.so*") or pytest.skip("no libonnxruntime.so here")
    ort_lib = ctypes.CDLL(str(library))
    ort_lib.OrtGetApiBase.restype = ctypes.POINTER(_OrtApiBase)
    real = ort_lib.OrtGetApiBase().contents
    get_api_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)
    real_get_api = get_api_type(real.GetApi)
    wanted = host._require().ORT_API_VERSION
    asked = []

    @get_api_type
    def old_get_api(version):
        asked.append(version)
        return real_get_api(version) if version < wanted else None

    version = ctypes.create_string_buffer(b"1.20.0")

    @ctypes.CFUNCTYPE(ctypes.c_void_p)
    def old_version_string():
        return ctypes.addressof(version)

    fake = _OrtApiBase(
        ctypes.cast(old_get_api, ctypes.c_void_p).value,
        ctypes.cast(old_version_string, ctypes.c_void_p).value,
    )
    hostlib = ctypes.CDLL(host.library_path())
    hostlib.RegisterCustomOps.restype = ctypes.c_void_p
    hostlib.RegisterCustomOps.argtypes = [ctypes.c_void_p, ctypes.POINTER(_OrtApiBase)]
    status = hostlib.RegisterCustomOps(None, ctypes.byref(fake))
    assert status, "RegisterCustomOps must report an error, not succeed or crash"
    assert wanted in asked
    # OrtApi starts with CreateStatus, GetErrorCode, GetErrorMessage.
    api = ctypes.cast(real_get_api(1), ctypes.POINTER(ctypes.c_void_p))
    get_message = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)(api[2])
    message = get_message(status).decode()
    assert f"API version {wanted}" in message
    assert "ONNX Runtime 1.20.0" in message


def _run_setup(tmp_path: pathlib.Path, **env_overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(env_overrides)
    return subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-temp",
            str(tmp_path / "temp"),
            "--build-lib",
            str(tmp_path / "lib"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_setup_names_the_missing_compiler(tmp_path):
    result = _run_setup(tmp_path, CC="/nonexistent/cc", CXX="/nonexistent/c++")
    assert result.returncode != 0
    assert "could not build its kernel host" in result.stderr
    assert "`/nonexistent/cc` was not found" in result.stderr
    assert "apt-get install g++" in result.stderr


def test_setup_names_the_missing_headers(tmp_path):
    result = _run_setup(tmp_path, OPBRIDGE_ORT_INCLUDE_DIR=str(tmp_path / "nowhere"))
    assert result.returncode != 0
    assert "ONNX Runtime headers are unavailable" in result.stderr
    assert "OPBRIDGE_ORT_INCLUDE_DIR" in result.stderr
