"""opbridge.export hides torch's irrelevant noise, and only that."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

import opbridge
from opbridge._quiet import torch_noise_filtered

REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


class Warns(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.warn("the user's own warning", stacklevel=1)
        return torch.inverse(x) + x


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_keeps_user_warnings_and_drops_torch_noise(exporter: str) -> None:
    records = _Records()
    logger = logging.getLogger(REGISTRATION_LOGGER)
    logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opbridge.export(Warns(), (torch.eye(3) * 2,), exporter=exporter)
    finally:
        logger.removeHandler(records)
    messages = [str(w.message) for w in caught]
    assert "the user's own warning" in messages
    assert not [m for m in messages if "LeafSpec" in m], messages
    internal = [
        w for w in caught
        if issubclass(w.category, (DeprecationWarning, FutureWarning))
        and "/torch/" in w.filename.replace("\\", "/")
    ]  # fmt: skip
    assert not internal, [str(w.message) for w in internal]
    assert not [m for m in records.messages if "torchvision is not installed" in m]


def test_the_filter_is_scoped_to_opbridges_calls() -> None:
    records = _Records()
    logger = logging.getLogger(REGISTRATION_LOGGER)
    logger.addHandler(records)
    try:
        with torch_noise_filtered():
            logger.warning("torchvision is not installed. Skipping torchvision::nms")
            logger.warning("another message")
        logger.warning("torchvision is not installed. Skipping torchvision::nms")
    finally:
        logger.removeHandler(records)
    assert records.messages == [
        "another message",
        "torchvision is not installed. Skipping torchvision::nms",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch_noise_filtered():
            warnings.warn("deprecated in user code", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["deprecated in user code"]
