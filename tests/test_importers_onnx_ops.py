"""ONNX importer op coverage: each small graph (a batch-1 file) against onnxruntime at batch 3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from convertsnn.importers.onnx import load_onnx
from tests.onnx_files import rand_weights, run_ort, save_model


def _graph_file(path: Path, nodes, inits, out_rank: int, opset: int, shape=(1, 3, 6, 6)) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    out = nodes[-1].output[0]
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, [f"d{i}" for i in range(out_rank)])
    arrays = {
        k: np.asarray(v, dtype=np.int64 if isinstance(v, list) else None) for k, v in inits.items()
    }
    return save_model(nodes, [x], [y], arrays, path, opset)


def _i64(*values: int) -> list[int]:
    return list(values)


OP_CASES = {
    "Slice opset 13 with steps": (
        [helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])],
        {"s": _i64(1), "e": _i64(6), "a": _i64(2), "st": _i64(2)}, 4, 13,
    ),
    "Slice opset 9 attributes": (
        [helper.make_node("Slice", ["x"], ["y"], starts=[0, -3], ends=[2, 100], axes=[1, 3])], {}, 4, 9,
    ),
    "Gather channel list": ([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], {"i": _i64(0, 2)}, 4, 13),
    "Gather scalar index": (
        [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], {"i": np.array(1, np.int64)}, 3, 13,
    ),
    "ReduceMean attr + Squeeze input (opset 13)": (
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3]), helper.make_node("Squeeze", ["m", "ax"], ["y"])],
        {"ax": _i64(2, 3)}, 2, 13,
    ),
    "ReduceMean axes input (opset 18)": (
        [helper.make_node("ReduceMean", ["x", "ax"], ["y"], keepdims=0)], {"ax": _i64(-1, -2)}, 2, 18,
    ),
    "Unsqueeze + Squeeze attributes (opset 11)": (
        [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[2]), helper.make_node("Squeeze", ["u"], ["y"], axes=[2])],
        {}, 4, 11,
    ),
    "Pad reflect with axes (opset 18)": (
        [helper.make_node("Pad", ["x", "p", "", "ax"], ["y"], mode="reflect")],
        {"p": _i64(1, 2, 2, 1), "ax": _i64(2, 3)}, 4, 18,
    ),
    "Pad constant value (opset 11)": (
        [helper.make_node("Pad", ["x", "p", "v"], ["y"])],
        {"p": _i64(0, 0, 1, 0, 0, 0, 0, 2), "v": np.array(0.5, np.float32)}, 4, 11,
    ),
    "AveragePool without counting pads, ceil": (
        [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)],
        {}, 4, 17,
    ),
    "MaxPool uneven pads": (
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])], {}, 4, 17,
    ),
    "grouped dilated Conv, uneven pads": (
        [helper.make_node("Conv", ["x", "w"], ["y"], group=3, dilations=[2, 2], pads=[0, 1, 1, 0])],
        {"w": rand_weights(6, 1, 2, 2, seed=21)}, 4, 17,
    ),
    "PRelu per channel": ([helper.make_node("PRelu", ["x", "s"], ["y"])], {"s": rand_weights(3, 1, 1, seed=22)}, 4, 17),
    "Flatten + Gemm alpha/beta, transB=0": (
        [helper.make_node("Flatten", ["x"], ["f"]),
         helper.make_node("Gemm", ["f", "w", "c"], ["y"], alpha=0.5, beta=2.0)],
        {"w": rand_weights(108, 4, seed=23), "c": rand_weights(1, 4, seed=24)}, 2, 9,
    ),
    "Transpose to NHWC output": ([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])], {}, 4, 13),
    "Concat branches + Sum": (
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Concat", ["x", "r"], ["c"], axis=1),
         helper.make_node("Sum", ["c", "c", "c"], ["y"])],
        {}, 4, 9,
    ),
    "Clip with only a max (opset 13)": ([helper.make_node("Clip", ["x", "", "hi"], ["y"])], {"hi": np.array(0.3, np.float32)}, 4, 13),
    "GlobalAveragePool + Flatten axis 1": (
        [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["y"], axis=1)], {}, 2, 9,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OP_CASES))
def test_op_matches_onnxruntime_at_any_batch(case, tmp_path):
    nodes, inits, out_rank, opset = OP_CASES[case]
    path = _graph_file(tmp_path / "op.onnx", nodes, inits, out_rank, opset)
    ann = load_onnx(path)
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        ours = ann.model(x).numpy()
    assert np.abs(ours - run_ort(path, x.numpy(), chunk=1)).max() <= 1e-5
