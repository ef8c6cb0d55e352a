"""Helpers shared by the CLI commands: loading user code, making inputs."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opbridge._errors import OpbridgeError
from opbridge.native._library import SHIPPED_OPS

__all__ = [
    "NO_KERNEL_HINT",
    "CliError",
    "add_library_arguments",
    "add_model_arguments",
    "libraries",
    "import_target",
    "load_model",
    "parse_shape",
    "random_inputs",
    "read_model",
]


class CliError(OpbridgeError):
    """A command-line argument is wrong."""


#: How to give a custom node its kernel on the command line.
NO_KERNEL_HINT = (
    "On the command line: --import MODULE (a module or .py file that declares the op), "
    "--library libmyops.so (a C++ library that implements it), or --seed-kernels for the "
    "seed tutorials' ops (" + ", ".join(SHIPPED_OPS) + ")."
)


def add_library_arguments(parser: argparse.ArgumentParser) -> None:
    """``--library PATH`` (repeatable) and ``--seed-kernels``, for ``run`` and ``inspect``."""
    parser.add_argument(
        "--library", action="append", default=[], metavar="PATH",
        help="a C++ custom-op library the model runs with (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--seed-kernels", action="store_true",
        help="also use opbridge's shipped C++ kernels for the seed tutorials' ops "
        f"({', '.join(SHIPPED_OPS)}); never used unless asked",
    )  # fmt: skip


def libraries(args: argparse.Namespace) -> list[str]:
    """The libraries ``--library`` and ``--seed-kernels`` ask for."""
    found = list(args.library)
    if args.seed_kernels:
        from opbridge.native import library_path

        found.append(str(library_path()))
    return found


def import_target(spec: str) -> Any:
    """Imports ``package.module`` or ``path/to/file.py`` and returns the module."""
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise CliError(
                f"no such file '{spec}': give an existing .py file or a dotted module on sys.path"
            )
        name = f"_opbridge_user_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent.resolve()))
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as e:
        raise CliError(
            f"cannot import '{spec}': {e}; give a module on sys.path or a .py file"
        ) from e


def read_model(path: str) -> Any:
    """Reads an ONNX file's graph without its weights, or says which file is wrong and why."""
    from opbridge._model import read_graph

    file = Path(path)
    if not file.is_file():
        raise CliError(f"no such file '{path}': give the path of an .onnx model")
    try:
        model = read_graph(file)
    except Exception as e:  # protobuf's DecodeError, or a field the reader cannot walk
        raise CliError(
            f"'{path}' is not an ONNX model ({type(e).__name__}: {e}); give an .onnx file "
            "written by `opbridge export`, opbridge.export or torch.onnx.export"
        ) from e
    if not model.HasField("graph"):
        raise CliError(
            f"'{path}' is not an ONNX model (it holds no graph); give an .onnx file "
            "written by `opbridge export`, opbridge.export or torch.onnx.export"
        )
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` or ``"1x3x224x224"`` -> ``(1, 3, 224, 224)``."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts if p.strip() != "")
    except ValueError:
        raise CliError(f"bad --input-shape '{text}': write it like 1,3,224,224") from None
    if any(d < 0 for d in shape):
        raise CliError(f"bad --input-shape '{text}': sizes must be >= 0")
    return shape


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", metavar="MODULE:FACTORY",
        help="a callable returning an nn.Module, or (module, example_inputs); MODULE is a "
        "dotted module or a .py file",
    )  # fmt: skip
    parser.add_argument(
        "--input-shape", action="append", default=[], metavar="SHAPE",
        help="shape of one example input, e.g. 1,3,32,32 (repeat per input); not needed when "
        "FACTORY returns example inputs",
    )  # fmt: skip
    parser.add_argument("--dtype", default="float32", help="dtype of the random inputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    parser.add_argument("--opset", type=int, default=None, help="default-domain opset version")
    parser.add_argument(
        "--contrib-ops",
        action="store_true",
        help="use com.microsoft contrib ops where they replace standard ONNX",
    )


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, tuple[Any, ...]]:
    """Calls ``MODULE:FACTORY`` and builds its example inputs."""
    if ":" not in args.target:
        raise CliError(f"'{args.target}' is not MODULE:FACTORY, e.g. mymodels.py:make_model")
    module_name, _, factory_name = args.target.rpartition(":")
    module = import_target(module_name)
    factory = getattr(module, factory_name, None)
    if factory is None:
        raise CliError(f"'{module_name}' has no attribute '{factory_name}'")
    made = factory() if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
        model, inputs = made
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    elif isinstance(made, torch.nn.Module):
        model = made
        if not args.input_shape:
            raise CliError(f"{args.target} returns no example inputs: give --input-shape per input")
        inputs = random_inputs([parse_shape(s) for s in args.input_shape], args.dtype, args.seed)
    else:
        raise CliError(f"{args.target} returned {type(made).__name__}, not an nn.Module")
    return model.eval(), inputs


def random_inputs(shapes: list[tuple[int, ...]], dtype: str, seed: int) -> tuple[torch.Tensor, ...]:
    try:
        torch_dtype = getattr(torch, dtype)
        assert isinstance(torch_dtype, torch.dtype)
    except (AttributeError, AssertionError):
        raise CliError(f"unknown --dtype '{dtype}'") from None
    generator = torch.Generator().manual_seed(seed)
    if torch_dtype.is_floating_point:
        return tuple(torch.randn(s, generator=generator).to(torch_dtype) for s in shapes)
    return tuple(torch.randint(0, 10, s, generator=generator).to(torch_dtype) for s in shapes)


def random_array(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, 10, shape).astype(dtype)
