"""Fixtures for the native (C++ kernel library) tests."""

from __future__ import annotations

import pathlib

import pytest

import opbridge.native as native


@pytest.fixture(scope="session")
def kernel_lib() -> pathlib.Path:
    """opbridge's shipped kernel library, built (or found in the cache) once per run."""
    return native.library_path()


@pytest.fixture(scope="session")
def ort_headers() -> pathlib.Path:
    """The ONNX Runtime include directory the builds use."""
    return native.ort_include_dir()


@pytest.fixture
def fresh_cache(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, ort_headers: pathlib.Path
) -> pathlib.Path:
    """An empty build cache that still uses the already fetched ORT headers."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("OPBRIDGE_CACHE_DIR", str(cache))
    monkeypatch.setenv("OPBRIDGE_ORT_INCLUDE_DIR", str(ort_headers))
    return cache
