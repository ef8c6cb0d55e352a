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
    """Lowerings registered by a test do not leak into the next one, nor do the ops it
    declares in its own namespace (a parametrized test declares the same
    domain::op_type again, which opbridge refuses while the first one is declared)."""
    with opbridge.registry_scope(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield
    for op in opbridge.REGISTRY.ops():
        if op.namespace.startswith("obtest"):
            opbridge.REGISTRY.remove_op(op.qualified_name)


EXPORTERS = ["dynamo", "torchscript"]
