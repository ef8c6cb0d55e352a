"""The native build cache is verified before use: digests, whole names, CXX flags."""

from __future__ import annotations

import pathlib
import shutil
import textwrap

import pytest

from opbridge import native
from opbridge.native import _build, _headers

SOURCE = textwrap.dedent(
    """\
    #include <opbridge/ort_kernel.h>
    #ifndef NEEDS_FLAG
    #error "NEEDS_FLAG is not defined"
    #endif
    static void Thrice(const opbridge::Tensor<float>& x, opbridge::Tensor<float>& y) {
      float* out = y.Allocate(x.Shape());
      for (int64_t i = 0; i < x.NumberOfElement(); ++i) out[i] = 3.0f * x.Data()[i];
    }
    OPBRIDGE_REGISTER_OPS(ops) { ops.Add("test.cache", "Thrice", Thrice); }
    """
)


def _build_it(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, name: str = "thrice"):
    src = tmp_path / "thrice.cc"
    src.write_text(SOURCE)
    monkeypatch.setenv("CXX", "g++ -DNEEDS_FLAG")
    return native.build_library(name, [src])


def test_cxx_flags_are_honoured(fresh_cache, tmp_path, monkeypatch):
    assert _build_it(tmp_path, monkeypatch).is_file()


@pytest.mark.parametrize("damage", ["truncate", "replace"])
def test_a_damaged_cached_library_is_rebuilt(fresh_cache, tmp_path, monkeypatch, damage):
    lib = _build_it(tmp_path, monkeypatch)
    good = lib.read_bytes()
    if damage == "truncate":
        lib.write_bytes(good[: len(good) // 3])
    else:
        lib.write_bytes(good[::-1])
    compiles = _build.build_stats().compiles
    again = _build_it(tmp_path, monkeypatch)
    assert _build.build_stats().compiles == compiles + 1
    assert len(again.read_bytes()) == len(good)


@pytest.mark.parametrize("name", ["nl\n", "a\nb", "ok\n\n"])
def test_names_are_checked_whole(fresh_cache, tmp_path, name):
    with pytest.raises(native.BuildError, match="invalid library name"):
        native.build_library(name, [tmp_path / "x.cc"])
    with pytest.raises(native.BuildError, match="invalid library name"):
        native.load_inline(name, SOURCE)


def test_source_names_with_make_metacharacters_build(fresh_cache, tmp_path, monkeypatch):
    src = tmp_path / "we$ird#name.cc"
    src.write_text(SOURCE)
    monkeypatch.setenv("CXX", "g++ -DNEEDS_FLAG")
    assert native.build_library("weird", [src]).is_file()


def test_damaged_header_cache_is_not_used(tmp_path, ort_headers):
    cache = tmp_path / "headers"
    shutil.copytree(ort_headers, cache)
    (cache / _headers._DIGESTS).unlink(missing_ok=True)
    assert _headers._is_complete(cache)  # digests recorded on first use
    assert _headers._is_complete(cache)
    header = cache / "onnxruntime_c_api.h"
    header.write_bytes(header.read_bytes()[:1000])
    assert not _headers._is_complete(cache)


def test_depfile_unescapes_make_metacharacters():
    text = "x.o: /a/we$$ird\\#name.cc /b/with\\ space.h\n"
    assert _build._parse_depfile(text) == ["/a/we$ird#name.cc", "/b/with space.h"]
