"""Build and load the seed's C++ group norm operator with torch.utils.cpp_extension.

    python examples/cpp_extension/load_extension.py            # builds both forms, runs a check

or, from Python::

    from load_extension import load_custom_group_norm
    op = load_custom_group_norm("torch_library")      # torch.ops.mynamespace_lib.custom_group_norm

Two forms of one source (``custom_group_norm.cpp``):

* ``"register_operators"``: the seed's ``torch::RegisterOperators``, registered as
  ``mynamespace::custom_group_norm``;
* ``"torch_library"``: ``TORCH_LIBRARY``, registered as
  ``mynamespace_lib::custom_group_norm`` (a different namespace, so both forms can be
  loaded in one process).

Loading needs a C++ compiler and ninja; builds are cached by torch in
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``).
"""

from __future__ import annotations

import pathlib
from typing import Literal

import torch
import torch.utils.cpp_extension

__all__ = ["FORMS", "Form", "load_custom_group_norm", "qualified_name"]

Form = Literal["register_operators", "torch_library"]
FORMS: tuple[Form, ...] = ("register_operators", "torch_library")
_SOURCE = pathlib.Path(__file__).resolve().parent / "custom_group_norm.cpp"
_NAMESPACES = {"register_operators": "mynamespace", "torch_library": "mynamespace_lib"}


def qualified_name(form: Form) -> str:
    """The torch op name a form registers, e.g. ``"mynamespace::custom_group_norm"``."""
    return f"{_NAMESPACES[form]}::custom_group_norm"


def load_custom_group_norm(form: Form = "register_operators", *, verbose: bool = False):
    """Compiles (once, cached) and loads one form; returns its ``torch.ops`` packet.

    Args:
        form: ``"register_operators"`` or ``"torch_library"``.
        verbose: Show the compiler output.

    Returns:
        ``torch.ops.mynamespace.custom_group_norm`` or
        ``torch.ops.mynamespace_lib.custom_group_norm``.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    flags = ["-O3"] + (["-DOPBRIDGE_TORCH_LIBRARY"] if form == "torch_library" else [])
    torch.utils.cpp_extension.load(
        name=f"custom_group_norm_{form}",
        sources=[str(_SOURCE)],
        extra_cflags=flags,
        is_python_module=False,  # the library only registers ops; load it into torch.ops
        verbose=verbose,
    )
    return getattr(torch.ops, _NAMESPACES[form]).custom_group_norm


def _main() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 2, 1, 2)
    args = (x, torch.tensor([2.0]), torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0]))
    expected = torch.nn.functional.group_norm(x, 2, args[2], args[3], 0.0)
    for form in FORMS:
        op = load_custom_group_norm(form)
        result = op(*args, torch.tensor([0.0]))
        error = (result - expected).abs().max().item()
        print(f"{qualified_name(form)}: max |diff| vs torch group_norm = {error:.2e}")


if __name__ == "__main__":
    _main()
