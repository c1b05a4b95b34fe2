"""Small ONNX files for the importer tests, written with onnx.helper, and an onnxruntime runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def run_ort(path: Path, x: np.ndarray, output: str | None = None, chunk: int | None = None):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    chunk = chunk or len(x)
    return np.concatenate(
        [
            session.run([output] if output else None, {name: x[i : i + chunk]})[0]
            for i in range(0, len(x), chunk)
        ]
    )


def save_model(nodes, inputs, outputs, inits, path: Path, opset: int, **kwargs) -> Path:
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kwargs)
    model.ir_version = min(model.ir_version, 8)
    onnx.save(model, str(path))
    return path


def rand_weights(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.5, shape).astype(np.float32)


def opset9_fixed_batch_file(path: Path) -> Path:
    """Old-exporter style: fixed batch 1, Sub/Div normalisation in the graph, Pad/Clip/Squeeze
    with attributes, asymmetric SAME pooling, Shape-folded Reshape, Gemm, output Softmax."""
    inits = {
        "mean": np.array([0.4, 0.5, 0.6], np.float32).reshape(1, 3, 1, 1),
        "std": np.array([0.2, 0.25, 0.3], np.float32).reshape(1, 3, 1, 1),
        "w1": rand_weights(8, 3, 3, 3, seed=1),
        "b1": rand_weights(8, seed=2),
        "scale": np.abs(rand_weights(8, seed=3)) + 0.5,
        "bias": rand_weights(8, seed=4),
        "rmean": rand_weights(8, seed=5),
        "rvar": np.abs(rand_weights(8, seed=6)) + 0.5,
        "w2": rand_weights(8, 8, 1, 1, seed=7),
        "wfc": rand_weights(5, 16 * 4 * 4, seed=8) * 0.1,
        "bfc": rand_weights(5, seed=9),
        "minus1": np.array([-1], np.int64),
        "zero": np.array([0], np.int64),
    }
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["n1"]),
        helper.make_node("Div", ["n1", "std"], ["n2"]),
        helper.make_node("Pad", ["n2"], ["n3"], pads=[0, 0, 1, 1, 0, 0, 1, 1]),
        helper.make_node("Conv", ["n3", "w1", "b1"], ["n4"], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["n4", "scale", "bias", "rmean", "rvar"], ["n5"]),
        helper.make_node("Clip", ["n5"], ["n6"], min=0.0, max=6.0),
        helper.make_node(
            "MaxPool", ["n6"], ["n7"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"
        ),
        helper.make_node("Conv", ["n7", "w2"], ["n8"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["n8"], ["n9"]),
        helper.make_node("Concat", ["n7", "n9"], ["n10"], axis=1),
        helper.make_node("Dropout", ["n10"], ["n11"], ratio=0.5),
        helper.make_node("Shape", ["n11"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["n11", "target"], ["n12"]),
        helper.make_node("Gemm", ["n12", "wfc", "bfc"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5])
    return save_model(
        nodes, [x], [y], inits, path, 9, producer_name="hand-built (old exporter style)"
    )


def nhwc_file(path: Path) -> Path:
    """tf2onnx style: NHWC input with a symbolic batch, normalisation on the channels-last
    tensor, Transposes around the convs, SAME padding, conv + Add bias, MatMul + Add."""
    inits = {
        "mean": np.array([0.5, 0.4, 0.3], np.float32),
        "inv_std": np.array([4.0, 5.0, 3.0], np.float32),
        "w1": rand_weights(6, 3, 3, 3, seed=11),
        "b1": rand_weights(1, 6, 1, 1, seed=12),
        "w2": rand_weights(6, 6, 3, 3, seed=13),
        "wfc": rand_weights(4 * 4 * 6, 5, seed=14) * 0.1,
        "bfc": rand_weights(5, seed=15),
        "perm_axes": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
        "index0": np.array(0, np.int64),
    }
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["a1"]),
        helper.make_node("Mul", ["a1", "inv_std"], ["a2"]),
        helper.make_node("Transpose", ["a2"], ["a3"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "Conv", ["a3", "w1"], ["a4"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"
        ),
        helper.make_node("Add", ["a4", "b1"], ["a5"]),
        helper.make_node("Relu", ["a5"], ["a6"]),
        helper.make_node("Conv", ["a6", "w2"], ["a7"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a7"], ["a8"]),
        helper.make_node("Transpose", ["a8"], ["a9"], perm=[0, 2, 3, 1]),
        helper.make_node("Shape", ["a9"], ["s"]),
        helper.make_node("Gather", ["s", "index0"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "perm_axes"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["a9", "target"], ["a10"]),
        helper.make_node("MatMul", ["a10", "wfc"], ["a11"]),
        helper.make_node("Add", ["a11", "bfc"], ["logits"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["unk__0", 8, 8, 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["unk__0", 5])
    return save_model(nodes, [x], [y], inits, path, 13, producer_name="hand-built (tf2onnx style)")
