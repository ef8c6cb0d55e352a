"""Child process for test_cpp_extension.py: one form of the seed's C++ op, end to end.

Run as ``python cpp_extension_worker.py FORM OUT_DIR``. It runs in its own process
because torch op names and opbridge lowerings are process-global: loading
``mynamespace::custom_group_norm`` from C++ must not clash with (or leak into) other
tests that declare an op of that name in Python.

Writes ``OUT_DIR/arrays.npz`` (inputs and every result) and ``OUT_DIR/report.json``
(graph facts and error messages); the test process does all the comparisons.
"""

from __future__ import annotations

import json
import pathlib
import sys
import traceback

import numpy as np
import onnx
import onnxruntime as ort
import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "cpp_extension"))

from load_extension import load_custom_group_norm, qualified_name  # noqa: E402

import opbridge  # noqa: E402
import opbridge.native  # noqa: E402

# Random shapes for the eager check: (shape, groups).
EAGER_CASES = [((3, 2, 1, 2), 2), ((2, 6, 5, 7), 3), ((4, 8), 4), ((2, 4, 3, 3, 3), 1)]


def main(form: str, out_dir: pathlib.Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    report: dict[str, object] = {"name": qualified_name(form)}
    custom_group_norm = load_custom_group_norm(form)

    # 1. The C++ op in eager mode.
    rng = np.random.default_rng(0)
    for i, (shape, groups) in enumerate(EAGER_CASES):
        x = rng.standard_normal(shape).astype(np.float32) * 2 + 1
        scale = rng.standard_normal(shape[1]).astype(np.float32)
        bias = rng.standard_normal(shape[1]).astype(np.float32)
        eps = np.float32(rng.choice([0.0, 1e-5, 0.1]))
        group_tensor = torch.tensor([groups], dtype=torch.int64 if i % 2 else torch.float32)
        y = custom_group_norm(
            torch.from_numpy(x),
            group_tensor,
            torch.from_numpy(scale),
            torch.from_numpy(bias),
            torch.tensor([float(eps)]),
        )
        arrays.update({f"eager{i}_x": x, f"eager{i}_scale": scale, f"eager{i}_bias": bias})
        arrays[f"eager{i}_eps"] = np.array(eps)
        arrays[f"eager{i}_groups"] = np.array(groups)
        arrays[f"eager{i}_y"] = y.numpy()

    # 2. Bad inputs raise (TORCH_CHECK) instead of reading out of bounds.
    good = [torch.ones(2, 4, 3), torch.tensor([2.0]), torch.ones(4), torch.zeros(4)]
    bad_cases = {
        "rank": [torch.ones(4), *good[1:]],
        "groups": [good[0], torch.tensor([3.0]), *good[2:]],
        "scale": [*good[:2], torch.ones(3), good[3]],
        "dtype": [good[0].double(), *good[1:]],
    }
    errors = {}
    for label, args in bad_cases.items():
        try:
            custom_group_norm(*args, torch.tensor([0.0]))
            errors[label] = None
        except RuntimeError as exc:
            errors[label] = str(exc).splitlines()[0]
    report["errors"] = errors

    # 3. Export to mydomain::testgroupnorm with both exporters and run on the native kernel.
    @opbridge.register_lowering(qualified_name(form))
    def _lower(op, X, num_groups, scale, bias, eps):
        # eps is a tensor made inside forward: a constant at export time, which becomes
        # the node's float attribute.
        return op.domain("mydomain", version=2).testgroupnorm(
            X, num_groups, scale, bias, epsilon=float(op.scalar_of(eps))
        )

    class SeedModel(torch.nn.Module):
        def forward(self, x, num_groups, scale, bias):
            return custom_group_norm(x, num_groups, scale, bias, torch.tensor([0.0]))

    torch.manual_seed(0)
    inputs = (
        torch.randn(3, 2, 1, 2),
        torch.tensor([2.0]),
        torch.tensor([2.0, 1.0]),
        torch.tensor([1.0, 0.0]),
    )
    for k, name in enumerate(["X", "num_groups", "scale", "bias"]):
        arrays[f"seed_{name}"] = inputs[k].numpy()
    arrays["seed_torch_op"] = SeedModel()(*inputs).numpy()
    library = str(opbridge.native.library_path())
    exports = {}
    for exporter in ("dynamo", "torchscript"):
        try:
            model = opbridge.export(
                SeedModel(),
                inputs,
                exporter=exporter,
                input_names=["X", "num_groups", "scale", "bias"],
                output_names=["Y"],
                custom_opsets={"mydomain": 2},
            )
            onnx.checker.check_model(model)
            nodes = [
                {
                    "domain": n.domain,
                    "op_type": n.op_type,
                    "attributes": {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute},
                }
                for n in model.graph.node
                if n.op_type != "Constant"
            ]
            feeds = {n: arrays[f"seed_{n}"] for n in ["X", "num_groups", "scale", "bias"]}
            # opbridge's Session with the native library...
            session = opbridge.Session(model, libraries=[library])
            arrays[f"{exporter}_session"] = np.asarray(session.run(feeds)[0])
            # ...and a plain InferenceSession with only register_custom_ops_library.
            options = ort.SessionOptions()
            options.register_custom_ops_library(library)
            plain = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            arrays[f"{exporter}_plain"] = plain.run(None, feeds)[0]
            exports[exporter] = {
                "nodes": nodes,
                "opsets": {o.domain: o.version for o in model.opset_import},
                "inputs": [i.name for i in model.graph.input],
            }
        except Exception:
            exports[exporter] = {"failure": traceback.format_exc()}
    report["exports"] = exports

    np.savez(out_dir / "arrays.npz", **arrays)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], pathlib.Path(sys.argv[2]))
