"""Shared fixtures. Torch op names are process-global, so each test names its ops."""

from __future__ import annotations

import itertools
import warnings

import pytest

import opbridge

_counter = itertools.count()


@pytest.fixture
def ns() -> str:
    """A torch namespace no other test uses."""
    return f"obtest{next(_counter)}"


@pytest.fixture(autouse=True)
def _isolated_lowerings():
    """Lowerings registered by a test do not leak into the next one."""
    with opbridge.registry_scope(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


EXPORTERS = ["dynamo", "torchscript"]
