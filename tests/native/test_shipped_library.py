"""The shipped kernel library: prebuilt at install time, rebuilt only for edited sources."""

from __future__ import annotations

import pathlib

import pytest

import opbridge
import opbridge.native as native
from opbridge.native import _library
from opbridge.native._build import build_stats
from opbridge.native._digest import kernel_sources_digest


def test_installed_package_carries_the_prebuilt_library() -> None:
    # scripts/setup.sh (and every wheel) builds it with the kernel host.
    prebuilt = _library.prebuilt_library()
    assert prebuilt is not None, "no prebuilt kernel library: reinstall opbridge"
    assert prebuilt.parent.name == "_lib" and prebuilt.name == "libopbridge_kernels.so"
    before = build_stats().compiles
    assert opbridge.library_path() == prebuilt
    assert build_stats().compiles == before  # no compiler involved
    assert native.is_shipped_library(prebuilt)


def test_edited_sources_make_the_prebuilt_library_stale(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = tmp_path / "kernels.sha256"
    monkeypatch.setattr(_library, "_PREBUILT_DIGEST", digest)
    assert _library.prebuilt_library() is None  # no digest: not trusted
    digest.write_text("0" * 64 + "\n")
    assert _library.prebuilt_library() is None  # sources changed since the build
    digest.write_text(kernel_sources_digest(pathlib.Path(native.__file__).parent) + "\n")
    assert _library.prebuilt_library() is not None


def test_digest_covers_kernel_sources_and_the_header(tmp_path: pathlib.Path) -> None:
    (tmp_path / "kernels").mkdir()
    (tmp_path / "include" / "opbridge").mkdir(parents=True)
    (tmp_path / "kernels" / "a.cc").write_text("int a;\n")
    (tmp_path / "include" / "opbridge" / "ort_kernel.h").write_text("// v1\n")
    first = kernel_sources_digest(tmp_path)
    (tmp_path / "include" / "opbridge" / "ort_kernel.h").write_text("// v2\n")
    second = kernel_sources_digest(tmp_path)
    (tmp_path / "kernels" / "a.cc").write_text("int b;\n")
    third = kernel_sources_digest(tmp_path)
    assert len({first, second, third}) == 3


def test_is_shipped_library_recognises_only_opbridges_library(tmp_path: pathlib.Path) -> None:
    assert native.is_shipped_library(tmp_path / "libopbridge_kernels-0123abcd.so")
    assert not native.is_shipped_library(tmp_path / "libmyops.so")
    assert not native.is_shipped_library(tmp_path / "libopbridge_kernels_extra.so")
