"""The HTML report, rendered by a real headless browser (Debian's chromium).

scripts/test.sh installs chromium (scripts/install_chromium.sh); without it these tests
fail rather than skip, so a green run means the page really rendered.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import opbridge


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: run scripts/install_chromium.sh")
    return found


def _browser(*flags: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", *flags, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


class _Dom(HTMLParser):
    """Collects elements with their attributes and text, as the browser serialised them."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, str]] = []
        self._open: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = {"tag": tag, "text": "", **{k: v or "" for k, v in attrs}}
        self.elements.append(element)
        if tag not in ("meta", "path", "line", "rect", "br", "marker"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        if not any(e["tag"] == tag for e in self._open):
            return  # </rect>, </line>: never opened on the stack
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element["text"] += data

    def find(self, **want: str) -> list[dict[str, str]]:
        return [
            e
            for e in self.elements
            if all(
                want[k] in e.get(k, "").split() if k == "class" else e.get(k) == want[k]
                for k in want
            )
        ]


def _png_pixels_vary(png: bytes) -> bool:
    """Decodes the PNG's IHDR and IDAT enough to say the picture is not one flat colour."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        if kind == b"IDAT":
            idat += png[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return len(set(raw[1 : len(raw) : 97])) > 3


@pytest.fixture
def failing_report(ns: str) -> opbridge.VerificationReport:
    @opbridge.custom_op(f"{ns}::bump", domain=f"{ns}.d")
    def bump(x: Tensor, k: int) -> Tensor:
        return x + 1

    bump.register_kernel(lambda x, k: x + np.float32(1.01 if k == 4 else 1.0))

    class Bumps(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            for k in range(8):
                x = torch.relu(bump(x, k) - 1.0) + x
            return x

    return opbridge.verify(Bumps(), (torch.randn(3, 4),), random_inputs=1)


def test_page_renders_and_numbers_match(
    failing_report: opbridge.VerificationReport, tmp_path: Path
) -> None:
    report = failing_report
    page = tmp_path / "report.html"
    report.save_html(page)
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace(
        "http://www.w3.org/2000/svg", ""
    )  # self-contained
    dom = _Dom()
    dom.feed(_browser("--dump-dom", url=page.as_uri()).stdout)

    verdict = dom.find(id="verdict")[0]
    assert verdict["data-passed"] == "false" and "FAILED" in verdict["text"]
    rows = dom.find(tag="tr", **{"class": "output"})
    assert len(rows) == sum(len(s.outputs) for s in report.input_sets) == 2
    cells = [c for c in dom.find(tag="td") if "max-abs" in c.get("class", "").split()]
    shown = [float(c["data-value"]) for c in cells]
    want = [o.max_abs_diff for s in report.input_sets for o in s.outputs]
    assert shown[: len(want)] == want
    assert all(f"{v:.3g}" == c["text"].strip() for v, c in zip(want, cells, strict=False))

    d = report.first_divergence
    assert d is not None
    assert dom.find(tag="td", **{"class": "node"})[0]["text"] == d.node
    assert dom.find(tag="td", **{"class": "origin"})[0]["text"] == d.origin
    (inputs_cell,) = [
        c for c in dom.find(tag="td") if "inputs-max-abs" in c.get("class", "").split()
    ]
    assert float(inputs_cell["data-value"]) == d.inputs_max_abs_diff
    steps = dom.find(tag="tr", **{"class": "step"})
    assert steps and d.node in steps[-1]["text"]
    assert len(steps) == min(len(report.localization.path()), 25)  # type: ignore[union-attr]

    assert dom.find(tag="svg", id="graph")
    (red,) = dom.find(tag="g", **{"class": "diverges"})
    assert red["data-node"] == d.node and f"{d.max_abs_diff:.3g}" in red["text"]
    assert dom.find(tag="g", **{"class": "ok"})

    shot = tmp_path / "shot.png"
    _browser(f"--screenshot={shot}", "--window-size=1200,1400", url=page.as_uri())
    assert _png_pixels_vary(shot.read_bytes())


def test_passing_report_page(tmp_path: Path) -> None:
    report = opbridge.verify(torch.nn.Linear(4, 2).eval(), (torch.randn(2, 4),), localize=True)
    assert report.passed and report.first_divergence is None
    page = tmp_path / "ok.html"
    report.save_html(page)
    dom = _Dom()
    dom.feed(_browser("--dump-dom", url=page.as_uri()).stdout)
    assert dom.find(id="verdict")[0]["data-passed"] == "true"
    assert dom.find(id="no-divergence") and not dom.find(tag="svg")
    cell = next(c for c in dom.find(tag="td") if "max-abs" in c.get("class", "").split())
    assert float(cell["data-value"]) == report.outputs[0].max_abs_diff
