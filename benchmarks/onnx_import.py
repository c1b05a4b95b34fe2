"""ONNX / timm / RobustBench import fidelity: does anything change on the way in?

For eight model families, each exported with torch's default (dynamo) exporter and the legacy
TorchScript exporter, the imported torch module is compared with onnxruntime on the same real
images and then converted. Files from other tools (onnx-caffe2 models shipped with the onnx
package, TF-style NHWC graphs, onnx.version_converter output, external data), two real pretrained
CIFAR-10 models (accuracy before and after import) and RobustBench entries loaded from a local
model_dir follow. Writes benchmarks/results/onnx_import.{md,json}.

    OMP_NUM_THREADS=1 python benchmarks/onnx_import.py --data-dir ../shared/data \
        --models-dir ../shared/models

Weights: the ImageNet-size families, the WRN, the MLP and the RobustBench entries use random
initialisation (no weight downloads here); ResNet-20 and ResNet-2B use the real checkpoints in
--models-dir. Rows are saved as they finish; --resume skips rows already in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from convertsnn.convert import convert
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.report import write_json
from convertsnn.importers import Preprocessing, load_ann
from convertsnn.importers.checkpoint import load_checkpoint
from convertsnn.importers.onnx.verify import onnxruntime_outputs
from convertsnn.snn.serialize import atomic_write, load_snn, save_snn

ROOT = Path(__file__).resolve().parents[1]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TIMESTEPS = 8
CALIBRATION = "percentile:99.99"


# ---- data ----------------------------------------------------------------------------------


def real_images(data_dir: Path, kind: str, n: int, split: str = "train", offset: int = 0):
    """Real images in [0, 1] (NCHW) and labels: CIFAR-10 (also upsampled to 224) or MNIST."""
    name = "mnist.npz" if kind == "mnist" else "cifar10_lossless_subset.npz"
    with np.load(data_dir / name) as data:
        x = data[f"x_{split}"][offset : offset + n]
        y = data[f"y_{split}"][offset : offset + n]
    x = torch.from_numpy(x).float() / 255
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if kind == "imagenet":
        x = F.interpolate(x, size=224, mode="bilinear", align_corners=False).clamp(0, 1)
    return x.contiguous(), torch.from_numpy(y).long()


# ---- model families --------------------------------------------------------------------------


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return nn.Sequential(
            _normalize(IMAGENET_MEAN, IMAGENET_STD), getattr(torchvision.models, name)()
        )

    return build


def _normalize(mean, std) -> nn.Module:
    from convertsnn.layers import Normalize

    return Normalize(mean, std)


def _timm_resnet18() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import timm
    return nn.Sequential(_normalize(IMAGENET_MEAN, IMAGENET_STD), timm.create_model("resnet18"))


def _real_checkpoint(models_dir: Path, file: str, arch: str, mean, std) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        ann = load_checkpoint(models_dir / file, arch, preprocessing=Preprocessing(mean, std))
        return ann.model

    return build


def _preact_wrn() -> nn.Module:
    from convertsnn._compat.robustbench import import_robustbench

    import_robustbench()
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    return nn.Sequential(_normalize(CIFAR_MEAN, CIFAR_STD), WideResNet(depth=16, widen_factor=4))


def _mlp() -> nn.Module:
    return nn.Sequential(
        _normalize((0.1307,), (0.3081,)),
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def families(models_dir: Path) -> list[dict]:
    """name, builder, data kind (input size), weights."""
    return [
        dict(name="torchvision ResNet-18", build=_torchvision("resnet18"), data="imagenet", weights="random"),
        dict(name="torchvision VGG-11-BN", build=_torchvision("vgg11_bn"), data="imagenet", weights="random"),
        dict(name="torchvision MobileNetV2 (ReLU6)", build=_torchvision("mobilenet_v2"), data="imagenet", weights="random"),
        dict(name="timm ResNet-18", build=_timm_resnet18, data="imagenet", weights="random"),
        dict(name="CIFAR ResNet-20", build=_real_checkpoint(models_dir, "resnet20-12fca82f.th", "resnet20", IMAGENET_MEAN, IMAGENET_STD), data="cifar", weights="real (resnet20-12fca82f.th)"),
        dict(name="pre-act WRN-16-4 (RobustBench WideResNet)", build=_preact_wrn, data="cifar", weights="random"),
        dict(name="torchvision DenseNet-121 (concat)", build=_torchvision("densenet121"), data="imagenet", weights="random"),
        dict(name="MLP 784-256-128-10", build=_mlp, data="mnist", weights="random"),
    ]  # fmt: skip


# ---- measurements ----------------------------------------------------------------------------


def export(model: nn.Module, example: torch.Tensor, path: Path, exporter: str) -> None:
    """Default dynamo export (static shapes, batch 1) or legacy export with a dynamic batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (example,), str(path), verbose=False)
        else:
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, input_names=["input"],
                output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip


def ort_reference(path: Path, ann, images: torch.Tensor) -> np.ndarray:
    model = onnx.load(str(path))
    name = model.graph.output[0].name
    if ann.source.get("removed_output"):  # compare with the logits the module returns
        node = next(n for n in model.graph.node if name in n.output)
        name = node.input[0]
    return onnxruntime_outputs(
        path, model, name, images, ann.source["input_layout"], ann.source["fixed_batch"]
    )


def _is_plain_relu(model: nn.Module) -> bool:
    return not any(isinstance(m, (nn.ReLU6, nn.Hardtanh)) for m in model.modules())


def settle_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set BatchNorm statistics of a randomly initialised net to those of real images, so its
    activations have realistic scales (torch's default statistics shrink them to ~1e-9 in deep
    nets such as MobileNetV2)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batch
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


def convert_and_run(
    ann, calib: torch.Tensor, labels: torch.Tensor, check: torch.Tensor, work: Path
) -> dict:
    """Convert, save, load back, run T steps; for ReLU nets compare the SNN in ANN mode."""
    start = time.time()
    try:
        loader = DataLoader(TensorDataset(calib, labels), batch_size=16)
        snn = convert(
            ann.model, loader, timesteps=TIMESTEPS, calibration=CALIBRATION, metadata=ann.metadata()
        )
        path = work / "snn.safetensors"
        save_snn(snn, path)
        snn = load_snn(path)
        with torch.no_grad():
            out = snn(check)
            ann_mode = None
            if _is_plain_relu(ann.model):
                with snn.gradient("ann"):
                    ann_mode = float((snn(check) - ann.model(check)).abs().max())
        return {
            "converts": bool(torch.isfinite(out).all()),
            "spiking_layers": sum(1 for _ in snn.neurons()),
            "snn_ann_mode_max_abs_diff": ann_mode,
            "convert_seconds": round(time.time() - start, 1),
        }
    except ConvertSNNError as err:
        return {"converts": False, "error": str(err)}


def import_and_compare(
    path: Path, images: torch.Tensor, original: nn.Module | None, **kw
) -> tuple[dict, object]:
    start = time.time()
    ann = load_ann(str(path), **kw)
    seconds = time.time() - start
    reference = ort_reference(path, ann, images)
    with torch.no_grad():
        ours = ann.model(images).numpy()
        torch_vs_ort = (
            None if original is None else float(np.abs(original(images).numpy() - reference).max())
        )
    row = {
        "opset": ann.source["opset"],
        "producer": ann.source["producer"],
        "fixed_batch": ann.source["fixed_batch"],
        "input_layout": ann.source["input_layout"],
        "removed_output": ann.source["removed_output"],
        "import_seconds": round(seconds, 2),
        "max_abs_diff_vs_onnxruntime": float(np.abs(ours - reference).max()),
        "max_abs_logit": float(np.abs(reference).max()),
        "torch_vs_onnxruntime": torch_vs_ort,
        "images": len(images),
    }
    return row, ann


# ---- files from other tools ----------------------------------------------------------------


class TfStyleCNN(nn.Module):
    """The computation of the TF-style NHWC graph below, in torch (ground truth)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 32, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        x = F.relu(self.conv1((x - mean) / std))
        x = F.max_pool2d(x, 2)
        x = F.relu6(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = x.permute(0, 2, 3, 1).flatten(1)  # TF flattens channels-last
        return self.fc2(F.relu(self.fc1(x)))


def write_tf_style_onnx(net: TfStyleCNN, path: Path, opset: int, batch: int | str) -> Path:
    """NHWC input, normalisation on channels-last, Transposes around the convs, SAME padding,
    conv + Add bias, Relu6 as Clip, Shape-derived Reshape, MatMul + Add (tf2onnx's layout)."""
    t = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    inits = {
        "mean": np.array(CIFAR_MEAN, np.float32),
        "std": np.array(CIFAR_STD, np.float32),
        "w1": t["conv1.weight"], "b1": t["conv1.bias"].reshape(1, -1, 1, 1),
        "w2": t["conv2.weight"], "b2": t["conv2.bias"],
        "w3": t["conv3.weight"], "b3": t["conv3.bias"].reshape(1, -1, 1, 1),
        "fc1": t["fc1.weight"].T.copy(), "fc1b": t["fc1.bias"],
        "fc2": t["fc2.weight"].T.copy(), "fc2b": t["fc2.bias"],
        "minus1": np.array([-1], np.int64), "zero": np.array(0, np.int64),
        "axes0": np.array([0], np.int64), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
    }  # fmt: skip
    clip = (
        helper.make_node("Clip", ["c2"], ["r2"], min=0.0, max=6.0)
        if opset < 11
        else helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"])
    )
    unsqueeze = (
        helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0])
        if opset < 13
        else helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"])
    )
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["a"]),
        helper.make_node("Div", ["a", "std"], ["b"]),
        helper.make_node("Transpose", ["b"], ["b_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["b_nchw", "w1"], ["c1"], kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
        helper.make_node("Add", ["c1", "b1"], ["c1b"]),
        helper.make_node("Relu", ["c1b"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        clip,
        helper.make_node("Conv", ["r2", "w3"], ["c3"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c3", "b3"], ["c3b"]),
        helper.make_node("Relu", ["c3b"], ["r3"]),
        helper.make_node("Transpose", ["r3"], ["r3_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Shape", ["r3_nhwc"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        unsqueeze,
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["r3_nhwc", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc1"], ["f1"]),
        helper.make_node("Add", ["f1", "fc1b"], ["f1b"]),
        helper.make_node("Relu", ["f1b"], ["f1r"]),
        helper.make_node("MatMul", ["f1r", "fc2"], ["f2"]),
        helper.make_node("Add", ["f2", "fc2b"], ["logits"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "tf_style_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 32, 32, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )  # fmt: skip
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="onnx.helper (tf2onnx layout)",
    )
    model.ir_version = 8 if opset >= 13 else 4
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def onnx_caffe2_files() -> list[Path]:
    """The onnx-caffe2 exports shipped with the onnx package as backend test data."""
    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return sorted(folder.glob("light_*.onnx"))


# ---- the benchmark ---------------------------------------------------------------------------


class Results:
    """Rows keyed by id, saved atomically after each one (so a rerun with --resume skips them)."""

    def __init__(self, path: Path, resume: bool, header: dict) -> None:
        self.path = path
        old = json.loads(path.read_text()) if resume and path.is_file() else {}
        self.data = {**header, "rows": old.get("rows", {})}

    def done(self, key: str) -> bool:
        return key in self.data["rows"]

    def add(self, key: str, row: dict) -> None:
        self.data["rows"][key] = row
        write_json(self.path, self.data)
        print(f"[{key}] {json.dumps(row)}", flush=True)


def run_row(results: Results, key: str, fn: Callable[[], dict]) -> None:
    if results.done(key):
        return
    try:
        row = fn()
    except Exception as err:  # recorded, never hidden: the table shows the failure
        traceback.print_exc()
        row = {"failed": f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"}
    results.add(key, row)


def family_rows(results: Results, args, work: Path) -> None:
    for family in families(args.models_dir):
        images, _ = real_images(args.data_dir, family["data"], args.images, offset=0)
        calib, calib_labels = real_images(
            args.data_dir, family["data"], args.calib_images, offset=args.images
        )
        for exporter in ("dynamo", "legacy"):
            key = f"family/{family['name']}/{exporter}"

            def measure(
                family=family,
                exporter=exporter,
                images=images,
                calib=calib,
                calib_labels=calib_labels,
                key=key,
            ):
                torch.manual_seed(args.seed)
                model = family["build"]().eval()
                if family["weights"] == "random":
                    settle_batchnorm(model, calib)
                path = work / f"{key.replace('/', '_').replace(' ', '_')}.onnx"
                start = time.time()
                export(model, images[:1], path, exporter)
                row = {"family": family["name"], "exporter": exporter, "weights": family["weights"],
                       "export_seconds": round(time.time() - start, 1)}  # fmt: skip
                compared, ann = import_and_compare(path, images, model)
                row.update(compared)
                row.update(convert_and_run(ann, calib, calib_labels, images[:2], work))
                return row

            run_row(results, key, measure)


def accuracy_rows(results: Results, args, work: Path) -> None:
    """Real pretrained CIFAR-10 models: accuracy of torch, onnxruntime, the import and the SNN."""
    cases = [
        ("CIFAR ResNet-20 (resnet20-12fca82f.th)", "resnet20-12fca82f.th", "resnet20", IMAGENET_MEAN, IMAGENET_STD),
        ("ResNet-2B PGD (vnncomp_resnet2b_pgd2.pth)", "vnncomp_resnet2b_pgd2.pth", "resnet2b", CIFAR_MEAN, CIFAR_STD),
    ]  # fmt: skip
    test, test_labels = real_images(args.data_dir, "cifar", 1000, split="test")
    calib, calib_labels = real_images(args.data_dir, "cifar", 512)
    for name, file, arch, mean, std in cases:
        key = f"accuracy/{name}"

        def measure(file=file, arch=arch, mean=mean, std=std):
            model = _real_checkpoint(args.models_dir, file, arch, mean, std)().eval()
            path = work / f"{arch}.onnx"
            export(model, test[:1], path, "dynamo")
            ann = load_ann(str(path))
            reference = ort_reference(path, ann, test)
            loader = DataLoader(TensorDataset(calib, calib_labels), batch_size=128)
            snn = convert(ann.model, loader, timesteps=TIMESTEPS, calibration=CALIBRATION)
            with torch.no_grad():
                logits = {
                    "torch": model(test),
                    "onnxruntime": torch.from_numpy(reference),
                    "imported": ann.model(test),
                }
                for steps in (TIMESTEPS, 32):
                    snn.timesteps = steps
                    logits[f"snn_T{steps}"] = torch.cat([snn(test[i : i + 100]) for i in range(0, 1000, 100)])  # fmt: skip
            acc = {k: float((v.argmax(1) == test_labels).float().mean()) for k, v in logits.items()}
            same = int((logits["imported"].argmax(1) == logits["onnxruntime"].argmax(1)).sum())
            return {"accuracy": acc, "same_prediction_imported_vs_onnxruntime": same,
                    "max_abs_diff_vs_onnxruntime": float((logits["imported"] - logits["onnxruntime"]).abs().max()),
                    "test_images": 1000, "calibration_images": 512}  # fmt: skip

        run_row(results, key, measure)


def other_tool_rows(results: Results, args, work: Path) -> None:
    imagenet, labels = real_images(args.data_dir, "imagenet", args.images)
    calib, calib_labels = imagenet[:4], labels[:4]
    for path in onnx_caffe2_files():

        def measure(path=path):
            row, ann = import_and_compare(path, imagenet[:4], None)
            row["relative_diff"] = row["max_abs_diff_vs_onnxruntime"] / max(
                row["max_abs_logit"], 1e-30
            )
            row.update(convert_and_run(ann, calib, calib_labels, imagenet[:1], work))
            return row

        run_row(results, f"other/onnx-caffe2 {path.stem}", lambda m=measure: _refusal_as_row(m))

    cifar, _ = real_images(args.data_dir, "cifar", args.images)
    calib, calib_labels = real_images(args.data_dir, "cifar", args.calib_images, offset=args.images)
    net = TfStyleCNN().eval()
    for opset, batch in ((9, 1), (13, "unk__0")):

        def measure(opset=opset, batch=batch):
            path = write_tf_style_onnx(net, work / f"tf_style_opset{opset}.onnx", opset, batch)
            row, ann = import_and_compare(path, cifar, net)
            row.update(convert_and_run(ann, calib, calib_labels, cifar[:2], work))
            return row

        run_row(results, f"other/TF-style NHWC CNN, opset {opset}, batch {batch}", measure)

    calib_imagenet, calib_imagenet_labels = real_images(
        args.data_dir, "imagenet", 8, offset=args.images
    )
    torch.manual_seed(args.seed)
    resnet = settle_batchnorm(_torchvision("resnet18")(), calib_imagenet)

    def version_converted():
        source = work / "resnet18_legacy_opset9.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(resnet, (imagenet[:1],), str(source), dynamo=False, opset_version=9)
        converted = onnx.version_converter.convert_version(onnx.load(str(source)), 21)
        path = work / "resnet18_version_converter_opset21.onnx"
        onnx.save(converted, str(path))
        row, ann = import_and_compare(path, imagenet, resnet)
        row.update(convert_and_run(ann, calib_imagenet, calib_imagenet_labels, imagenet[:1], work))
        return row

    def external_data():
        path = work / "resnet18_external.onnx"
        export(resnet, imagenet[:1], path, "dynamo")
        model = onnx.load(str(path))
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            location="resnet18_external.data",
            size_threshold=0,
        )
        row, ann = import_and_compare(path, imagenet, resnet)
        row["files"] = sorted(p.name for p in work.glob("resnet18_external*"))
        row.update(convert_and_run(ann, calib_imagenet, calib_imagenet_labels, imagenet[:1], work))
        return row

    run_row(results, "other/onnx.version_converter ResNet-18 opset 9 -> 21", version_converted)
    run_row(results, "other/ResNet-18 with external data", external_data)


def _refusal_as_row(measure: Callable[[], dict]) -> dict:
    try:
        return measure()
    except ConvertSNNError as err:
        return {"refused": str(err)}


def cli_rows(results: Results, args, work: Path) -> None:
    """`convertsnn convert resnet18.onnx --timesteps 8` on a torchvision ResNet-18 at opset 20."""
    images, labels = real_images(args.data_dir, "imagenet", 16, offset=100)
    np.savez(work / "calib224.npz", x_train=(images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
             y_train=labels.numpy(), x_test=np.zeros((0, 224, 224, 3), np.uint8), y_test=np.zeros(0, np.int64))  # fmt: skip
    if not (work / "resnet18.onnx").is_file():
        export(_torchvision("resnet18")().eval(), images[:1], work / "resnet18.onnx", "dynamo")
    for extra in ([], ["--calib", "calib224.npz", "--calib-images", "16"]):
        command = ["convertsnn", "convert", "resnet18.onnx", "--timesteps", "8", *extra]
        key = "cli/" + " ".join(command)

        def measure(command=command):
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            done = subprocess.run(command, cwd=work, capture_output=True, text=True, env=env)
            lines = [
                line.split("\r")[-1] for line in done.stderr.splitlines() + done.stdout.splitlines()
            ]
            output = [
                line for line in lines if line.strip() and "it/s]" not in line
            ]  # no progress bars
            return {"exit_code": done.returncode, "output": output,
                    "opset": onnx.load(str(work / "resnet18.onnx")).opset_import[0].version}  # fmt: skip

        run_row(results, key, measure)


def robustbench_rows(results: Results, args, work: Path) -> None:
    from convertsnn._compat.robustbench import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    zoo = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]
    model_dir = work / "robustbench_models"
    (model_dir / "cifar10" / "Linf").mkdir(parents=True, exist_ok=True)
    images, _ = real_images(args.data_dir, "cifar", args.images)
    calib, calib_labels = real_images(args.data_dir, "cifar", args.calib_images, offset=args.images)
    for name, arch in (
        ("Carmon2019Unlabeled", "WRN-28-10"),
        ("Wong2020Fast", "PreActResNet-18 (normalisation inside)"),
        ("Sehwag2021Proxy_R18", "ResNet-18"),
        ("Rebuffi2021Fixing_R18_ddpm", "DM PreActResNet-18 with Swish"),
    ):

        def measure(name=name, arch=arch):
            torch.manual_seed(args.seed)
            model = settle_batchnorm(zoo[name]["model"](), calib)
            torch.save(
                {"state_dict": model.state_dict()}, model_dir / "cifar10" / "Linf" / f"{name}.pt"
            )
            start = time.time()
            ann = load_ann(f"robustbench:cifar10/Linf/{name}", model_dir=model_dir)
            with torch.no_grad():
                diff = float((ann.model(images) - model(images)).abs().max())
            row = {"architecture": arch, "load_seconds": round(time.time() - start, 1),
                   "max_abs_diff_vs_zoo_model": diff, "preprocessing": ann.preprocessing.to_dict()}  # fmt: skip
            row.update(convert_and_run(ann, calib, calib_labels, images[:2], work))
            return row

        run_row(results, f"robustbench/cifar10/Linf/{name}", measure)


def malformed_rows(results: Results, args, work: Path) -> None:
    """The one-line errors users see (the same cases are asserted in the tests)."""
    data = next(p for p in onnx_caffe2_files() if "squeezenet" in p.name).read_bytes()
    cases = {
        "truncated": lambda p: p.write_bytes(data[: len(data) // 2]),
        "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        "unknown op (Softsign)": lambda p: _single_node(p, helper.make_node("Softsign", ["x"], ["y"], name="Softsign_3"), 17),
        "opset 7": lambda p: _single_node(p, helper.make_node("Relu", ["x"], ["y"]), 7),
        "LRN (onnx-caffe2 AlexNet)": None,
    }  # fmt: skip
    for case, write in cases.items():

        def measure(case=case, write=write):
            if write is None:
                path = next(p for p in onnx_caffe2_files() if "alexnet" in p.name)
            else:
                path = work / "bad.onnx"
                write(path)
            done = subprocess.run(["convertsnn", "convert", str(path)], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
            return {"exit_code": done.returncode, "stderr": done.stderr.strip()}

        run_row(results, f"malformed/{case}", measure)


def _single_node(path: Path, node, opset: int) -> None:
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [1, 3, 4, 4])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))


# ---- report ----------------------------------------------------------------------------------


def _num(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and (value == 0 or 1e-3 <= abs(value) < 1e4):
        return f"{value:.{digits}f}" if abs(value) >= 1e-2 or value == 0 else f"{value:.4f}"
    return f"{value:.1e}" if isinstance(value, float) else str(value)


def _rows_under(rows: dict, prefix: str) -> Iterator[tuple[str, dict]]:
    """``(name, row)`` for every row keyed ``PREFIX/NAME``, in order."""
    for key, row in rows.items():
        if key.startswith(f"{prefix}/"):
            yield key.split("/", 1)[1], row


def _converts(row: dict) -> str:
    if "failed" in row:
        return f"failed: {row['failed']}"
    if "refused" in row:
        return f"refused at import: `{row['refused']}`"
    if row.get("converts"):
        return f"yes ({row['spiking_layers']} spiking layers)"
    return f"no: `{row.get('error', 'non-finite SNN output')}`"


def render(data: dict) -> str:
    rows = data["rows"]
    out = [
        "# ONNX, timm and RobustBench import: proof that nothing changed on the way",
        "",
        f"Command: `{data['command']}`  ",
        f"Data: {data['data']}  ",
        f"Machine: {data['machine']}; torch {data['torch']}, onnx {data['onnx']}, onnxruntime {data['onnxruntime']}.  ",
        f"Conversion: T={TIMESTEPS}, calibration `{CALIBRATION}`; 'converts' = convert, save, load back and run "
        "the SNN (finite outputs). 'SNN ann-mode' = the converted SNN with its neurons switched to ReLU "
        "(gradient mode `ann`, T=1) against the imported ANN: it checks the converted graph, shown for "
        "plain-ReLU nets only (ReLU6 nets clip).",
        "",
        "## Model families × exporters",
        "",
        f"Imported torch module vs onnxruntime on the same {data['images']} real images "
        "(CIFAR-10 train images, bilinearly upsampled to 224 for the ImageNet-size families; MNIST for "
        "the MLP). Target: max |Δ| ≤ 1e-4. 'dynamo' = torch.onnx.export defaults (static shapes, "
        "batch 1 from the example input); 'legacy' = dynamo=False with a dynamic batch axis.",
        "",
        "| family | weights | exporter | opset | batch in file | max \\|Δ\\| import vs ORT | max \\|Δ\\| torch vs ORT | max \\|logit\\| | import s | converts | SNN ann-mode max \\|Δ\\| |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, row in _rows_under(rows, "family"):
        family, exporter = name.split("/")
        if "failed" in row:
            out.append(f"| {family} | | {exporter} | | | | | | | failed: {row['failed']} | |")
            continue
        batch = row["fixed_batch"] if row["fixed_batch"] is not None else "dynamic"
        out.append(
            f"| {family} | {row['weights']} | {exporter} | {row['opset']} | {batch} | "
            f"{_num(row['max_abs_diff_vs_onnxruntime'])} | {_num(row['torch_vs_onnxruntime'])} | "
            f"{_num(row['max_abs_logit'])} | {row['import_seconds']} | {_converts(row)} | "
            f"{_num(row.get('snn_ann_mode_max_abs_diff'))} |"
        )
    out += [
        "",
        "## Real pretrained CIFAR-10 models: accuracy before and after import",
        "",
        "Exported with the dynamo exporter (normalisation as Sub/Div nodes inside the graph), imported, "
        "converted with 512 calibration images; accuracy on the 1,000 lossless test images.",
        "",
        "| model | torch | onnxruntime | imported | same predictions (import vs ORT) | max \\|Δ\\| | SNN T=8 | SNN T=32 |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, row in _rows_under(rows, "accuracy"):
        if "failed" in row:
            out.append(f"| {name} | failed: {row['failed']} | | | | | |")
            continue
        acc = row["accuracy"]
        out.append(
            f"| {name} | {100 * acc['torch']:.1f} % | {100 * acc['onnxruntime']:.1f} % | "
            f"{100 * acc['imported']:.1f} % | {row['same_prediction_imported_vs_onnxruntime']}/1000 | "
            f"{_num(row['max_abs_diff_vs_onnxruntime'])} | {100 * acc[f'snn_T{TIMESTEPS}']:.1f} % | "
            f"{100 * acc['snn_T32']:.1f} % |"
        )
    out += [
        "",
        "## Files from other tools",
        "",
        "- onnx-caffe2: the models the onnx package ships as backend test data "
        "(`onnx/backend/test/data/light/`, producer onnx-caffe2, opset 9, batch fixed to 1, "
        "weights filled by ConstantOfShape nodes, hence huge logits: see the relative difference). "
        "Compared on 4 images; converted with 4 calibration images; the output Softmax is dropped "
        "(the module returns the logits and is compared with ORT's logits).",
        "- TF-style NHWC: a CIFAR CNN written with onnx.helper in tf2onnx's layout (NHWC input, "
        "Sub/Div normalisation on channels-last, Transposes around the convs, SAME padding, "
        "conv + Add bias, Clip as ReLU6, Shape→Gather→Concat→Reshape, MatMul + Add), from the "
        "weights of a torch model that is the ground truth ('torch vs ORT').",
        "- onnx.version_converter: a legacy opset-9 ResNet-18 export converted up to opset 21 (the top "
        "of the supported range; converting the dynamo opset-20 file down to 9 fails inside onnx: "
        "'No Adapter From Version 14 for Sub').",
        "",
        "| file | producer | opset | batch | layout | max \\|Δ\\| import vs ORT | relative to max \\|logit\\| | torch vs ORT | converts | SNN ann-mode, relative |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, row in _rows_under(rows, "other"):
        if "refused" in row or "failed" in row:
            out.append(f"| {name} | | | | | | | | {_converts(row)} | |")
            continue
        scale = max(row["max_abs_logit"], 1e-30)
        rel = row["max_abs_diff_vs_onnxruntime"] / scale
        ann_mode = row.get("snn_ann_mode_max_abs_diff")
        ann_mode = "–" if ann_mode is None else f"{ann_mode / scale:.1e}"
        batch = row["fixed_batch"] if row["fixed_batch"] is not None else "dynamic"
        out.append(
            f"| {name} | {row['producer']} | {row['opset']} | {batch} | {row['input_layout']} | "
            f"{_num(row['max_abs_diff_vs_onnxruntime'])} | {rel:.1e} | {_num(row['torch_vs_onnxruntime'])} | "
            f"{_converts(row)} | {ann_mode} |"
        )
    out += [
        "",
        "## `convertsnn convert resnet18.onnx --timesteps 8` (torchvision ResNet-18, dynamo export)",
        "",
    ]
    for name, row in _rows_under(rows, "cli"):
        out += [f"`{name}` (file opset {row.get('opset')}) → exit {row.get('exit_code')}:", "",
                "```", *row.get("output", [row.get("failed", "")]), "```", ""]  # fmt: skip
    out += [
        "## RobustBench (cifar10/Linf) from a local model_dir",
        "",
        "Random-weight checkpoints written in RobustBench's layout (`model_dir/cifar10/Linf/NAME.pt`, "
        "`{'state_dict': ...}`), loaded offline through `robustbench.utils.load_model`; "
        "max |Δ| against the zoo model built directly.",
        "",
        "| entry | architecture | load s | max \\|Δ\\| vs zoo model | converts |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for name, row in _rows_under(rows, "robustbench"):
        if "failed" in row:
            out.append(f"| {name} | | | | failed: {row['failed']} |")
            continue
        out.append(
            f"| {name} | {row['architecture']} | {row['load_seconds']} | "
            f"{_num(row['max_abs_diff_vs_zoo_model'])} | {_converts(row)} |"
        )
    out += [
        "",
        "## Malformed inputs: what the user sees",
        "",
        "| case | exit | message |",
        "|---|---|---|",
    ]
    for name, row in _rows_under(rows, "malformed"):
        message = row.get("stderr", row.get("failed", "")).replace("|", "\\|")
        out.append(f"| {name} | {row.get('exit_code')} | `{message}` |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models-dir", type=Path, default=ROOT.parent / "shared" / "models")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--images", type=int, default=8, help="comparison images per model")
    parser.add_argument("--calib-images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="skip rows already in the JSON")
    args = parser.parse_args()
    import onnxruntime

    data, models = (os.path.relpath(p, ROOT) for p in (args.data_dir, args.models_dir))
    header = {
        "command": " ".join(["OMP_NUM_THREADS=1 python benchmarks/onnx_import.py", *sys.argv[1:]]),
        "data": f"{data}/cifar10_lossless_subset.npz, {data}/mnist.npz; checkpoints "
        f"{models}/resnet20-12fca82f.th, {models}/vnncomp_resnet2b_pgd2.pth",
        "machine": f"CPU, {torch.get_num_threads()} thread(s)",
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        "images": args.images, "seed": args.seed,
    }  # fmt: skip
    results = Results(args.out_dir / "onnx_import.json", args.resume, header)
    with tempfile.TemporaryDirectory(prefix="onnx_import_") as tmp:
        work = Path(tmp)
        for section in (
            family_rows,
            accuracy_rows,
            other_tool_rows,
            cli_rows,
            robustbench_rows,
            malformed_rows,
        ):
            section(results, args, work)
    report = render(results.data)
    atomic_write(args.out_dir / "onnx_import.md", lambda p: Path(p).write_text(report))
    print(report)


if __name__ == "__main__":
    main()
