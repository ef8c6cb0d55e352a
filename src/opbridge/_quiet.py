"""Hide what torch's internals print that says nothing about the user's model.

While opbridge calls into torch (``export()``, the CLI), torch's exporter logs
"torchvision is not installed. Skipping torchvision::nms" for each torchvision op it
cannot register (a ``logging`` warning of ``torch.onnx``'s registration module), and
torch's internals warn about their own deprecations (the ``LeafSpec``
``FutureWarning``, the legacy exporter's ``DeprecationWarning``). :func:`torch_noise_filtered`
drops exactly these, for the duration of the call: warnings raised from the user's own
modules, and every other log record, still reach the user.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator

__all__ = ["torch_noise_filtered"]

# Packages whose own deprecation warnings are irrelevant to an opbridge user.
_INTERNAL_MODULES = r"(torch|onnxscript|onnx_ir|onnx)(\.|$)"
# Deprecations torch attributes to the standard library (the warning's stack level
# points at copyreg when pytree rebuilds a spec), matched by message instead.
_INTERNAL_MESSAGES = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
# Loggers whose named records are dropped: logger name -> message prefixes.
_INTERNAL_LOG_RECORDS = {
    "torch.onnx._internal.exporter._registration": ("torchvision is not installed",),
}


class _DropRecords(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self._prefixes = prefixes
        self.active = 0  # nesting depth; the filter is permanent, active only inside calls

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.active and str(record.msg).startswith(self._prefixes))


_filters: dict[str, _DropRecords] = {}
_lock = threading.Lock()


def _log_filters() -> list[_DropRecords]:
    with _lock:
        if not _filters:
            for name, prefixes in _INTERNAL_LOG_RECORDS.items():
                drop = _DropRecords(prefixes)
                logging.getLogger(name).addFilter(drop)
                _filters[name] = drop
        return list(_filters.values())


@contextlib.contextmanager
def torch_noise_filtered() -> Iterator[None]:
    """Hides torch's irrelevant warnings and log lines inside the ``with`` block.

    Also usable as a decorator. Only deprecation warnings attributed to torch,
    onnxscript, onnx-ir or onnx themselves, the messages listed above and the
    "torchvision is not installed" log records are dropped.
    """
    filters = _log_filters()
    with _lock:
        for drop in filters:
            drop.active += 1
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category, module=_INTERNAL_MODULES)
            for message in _INTERNAL_MESSAGES:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        with _lock:
            for drop in filters:
                drop.active -= 1
