"""Export and profile benchmark: ONNX and NIR files of the zoo SNNs and a ResNet-20 SNN.

For each model, on the first N real test images (default 100): ONNX export time and size, the
largest logit difference between onnxruntime and convertsnn and their speed at T=8 (one thread
each); NIR export time and size, agreement of the graph read back by `convertsnn import` and of
Sinabs (an independent simulator, with convertsnn at v_init=0 since NIR has no initial state),
per-layer spike counts included; the accuracy cost of dropping v_init; and the profile (spikes,
SOPs, MACs, energy ratio SNN/ANN). On ResNet-2B the operation counts are cross-checked against
the syops counter (benchmarks/requirements.txt) when it imports. Writes
benchmarks/results/export_profile.{md,json}.

    OMP_NUM_THREADS=1 python benchmarks/export_profile.py --data-dir ../shared/data \
        --resnet20 resnet20_snn.safetensors

The ResNet-20 SNN is converted first with
    convertsnn convert ../shared/models/resnet20-12fca82f.th --arch resnet20 \
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \
        --calib ../shared/data/cifar10_lossless_subset.npz --calib-images 256 \
        --calibration mse -T 8 -o resnet20_snn.safetensors
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convertsnn.data import load_dataset
from convertsnn.eval.energy import profile_snn
from convertsnn.eval.energy_report import _count
from convertsnn.eval.report import format_table, write_json
from convertsnn.export.consumers import compare, graph_reference, run_sinabs
from convertsnn.export.nir import to_nir
from convertsnn.export.nir_import import from_nir, read_nir
from convertsnn.export.onnx import export_onnx
from convertsnn.snn.serialize import atomic_write, load_snn
from convertsnn.zoo import load_index, resolve_model_file

ROOT = Path(__file__).resolve().parents[1]
DATA = {"mnist": "mnist.npz", "cifar10": "cifar10_lossless_subset.npz"}


def seconds(fn, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def onnx_row(snn, images, folder: Path) -> dict:
    import onnxruntime

    start = time.perf_counter()
    path = export_onnx(snn, folder / "model.onnx")
    export_s = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    batch = images.numpy()
    logits = torch.from_numpy(session.run(None, {"images": batch})[0])
    with torch.no_grad():
        reference = snn(images)
        torch_s = seconds(lambda: snn(images))
    return {
        "export_s": export_s,
        "size_kib": path.stat().st_size / 1024,
        "max_abs_logit_diff": float((logits - reference).abs().max()),
        "images_within_1e-4": float(((logits - reference).abs().amax(1) <= 1e-4).float().mean()),
        "same_prediction": float((logits.argmax(1) == reference.argmax(1)).float().mean()),
        "onnxruntime_s": seconds(lambda: session.run(None, {"images": batch})),
        "convertsnn_s": torch_s,
    }


def nir_row(snn, images, labels, folder: Path) -> dict:
    import nir

    start = time.perf_counter()
    graph, notes = to_nir(snn)  # v_init spread over the steps as bias (the default)
    path = folder / "model.nir"
    atomic_write(path, lambda tmp: nir.write(tmp, graph))
    export_s = time.perf_counter() - start
    reference = graph_reference(graph, images)
    sinabs = compare(reference, run_sinabs(nir.read(str(path)), images, snn.timesteps))
    dropped, _ = to_nir(snn, v_init="drop")
    with torch.no_grad():
        original = snn(images)
        exact_back = from_nir(dropped)(images)  # v_init restored from the metadata

    def accuracy(logits):
        return float((logits.argmax(1) == labels).float().mean())

    return {
        "export_s": export_s,
        "size_kib": path.stat().st_size / 1024,
        "notes": notes,
        "import_drop_max_abs_logit_diff": float((exact_back - original).abs().max()),
        "sinabs": sinabs,
        "accuracy": accuracy(original),
        "accuracy_nir_bias": accuracy(reference[0]),
        "accuracy_nir_drop": accuracy(graph_reference(dropped, images)[0]),
    }


def syops_check(snn, images) -> dict:
    """Accumulates per layer: ours against syops' hooks, on the binary-spike model that
    `convertsnn import` builds from the NIR file (syops recognises spikes as {0, 1} inputs)."""
    try:
        from syops.ops import conv_syops_counter_hook, linear_syops_counter_hook
    except ImportError as err:
        return {"error": f"syops does not import here ({err})"}
    with tempfile.TemporaryDirectory() as tmp:
        import nir

        graph, _ = to_nir(snn)
        nir.write(Path(tmp) / "m.nir", graph)
        binary = read_nir(Path(tmp) / "m.nir")
    ours = {s.name: s for s in profile_snn(binary, images).synaptic_layers}
    model = copy.deepcopy(binary)
    hooks, modules = [], {}
    for node in model.body.graph.nodes:
        if node.op != "call_module":
            continue
        module = model.body.get_submodule(node.target)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.__syops__ = np.zeros(4)
            hook = (
                conv_syops_counter_hook
                if isinstance(module, nn.Conv2d)
                else linear_syops_counter_hook
            )
            hooks.append(module.register_forward_hook(hook))
            modules[node.name] = module
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    n = len(images)
    layers = {
        name: {
            "ours_sops": ours[name].snn_sops,
            "syops_acs": float(module.__syops__[1]) / n,
            "ours_macs": ours[name].snn_macs,
            "syops_macs": float(module.__syops__[2]) / n,
        }
        for name, module in modules.items()
    }
    return {"layers": layers}


def models(args) -> list[tuple[str, Path, str]]:
    rows = [
        (entry.name, resolve_model_file(f"zoo:{entry.name}"), entry.dataset)
        for entry in load_index().entries.values()
        if entry.kind == "snn" and entry.file
    ]
    if args.resnet20:
        rows.append(
            ("resnet20_snn_t8 (mse calibration, not finetuned)", Path(args.resnet20), "cifar10")
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--resnet20", help="ResNet-20 SNN file (see the module doc)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for name, path, dataset in models(args):
        print(f"== {name}", flush=True)
        snn = load_snn(path)
        data = load_dataset(str(args.data_dir / DATA[dataset]), split="test", limit=args.images)
        images, labels = data.tensors()
        with tempfile.TemporaryDirectory() as tmp:
            row = {
                "model": name,
                "data": f"{DATA[dataset]} test, first {len(images)}",
                "timesteps": snn.timesteps,
                "onnx": onnx_row(snn, images, Path(tmp)),
                "nir": nir_row(snn, images, labels, Path(tmp)),
                "profile": profile_snn(snn, images, labels).summary(),
            }
        if "resnet2b_pgd_snn_t8" == name.removeprefix("cifar10_"):
            row["syops"] = syops_check(snn, images)
        results.append(row)
        print(row["onnx"], {k: v for k, v in row["nir"].items() if k != "sinabs"}, flush=True)
    write_json(args.out / "export_profile.json", {"images": args.images, "rows": results})
    text = markdown(results, args)
    atomic_write(args.out / "export_profile.md", lambda tmp: Path(tmp).write_text(text))
    print(text)


def packages() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "onnxruntime", "nir", "nirtorch", "sinabs", "syops"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def markdown(results: list[dict], args) -> str:
    onnx = format_table(
        ["model", "T", "export s", "KiB", "max abs diff vs convertsnn", "images within 1e-4 %",
         "same prediction %", "onnxruntime s", "convertsnn s"],
        [[r["model"], str(r["timesteps"]), f"{r['onnx']['export_s']:.2f}",
          f"{r['onnx']['size_kib']:.0f}", f"{r['onnx']['max_abs_logit_diff']:.1e}",
          f"{100 * r['onnx']['images_within_1e-4']:.0f}",
          f"{100 * r['onnx']['same_prediction']:.0f}",
          f"{r['onnx']['onnxruntime_s']:.2f}", f"{r['onnx']['convertsnn_s']:.2f}"]
         for r in results],
        markdown=True,
    )  # fmt: skip
    nir_table = format_table(
        ["model", "export s", "KiB", "Sinabs: max abs logit diff", "Sinabs: same prediction %",
         "Sinabs: max rel. spike-count diff", "import (drop): max abs diff", "acc. %",
         "acc. % NIR (bias)", "acc. % NIR (drop)"],
        [[r["model"], f"{r['nir']['export_s']:.2f}", f"{r['nir']['size_kib']:.0f}",
          f"{r['nir']['sinabs']['max_abs_logit_diff']:.1e}",
          f"{100 * r['nir']['sinabs']['prediction_agreement']:.1f}",
          f"{r['nir']['sinabs']['max_rel_spike_count_diff']:.1e}",
          f"{r['nir']['import_drop_max_abs_logit_diff']:.1e}",
          f"{100 * r['nir']['accuracy']:.1f}", f"{100 * r['nir']['accuracy_nir_bias']:.1f}",
          f"{100 * r['nir']['accuracy_nir_drop']:.1f}"]
         for r in results],
        markdown=True,
    )  # fmt: skip
    profile = format_table(
        ["model", "spikes/image", "ANN MACs", "SNN SOPs", "SNN MACs (analog input)",
         "SNN/ANN energy", "settles at step", "acc. %"],
        [[r["model"], _count(p["totals"]["spikes_per_image"]), _count(p["totals"]["ann_macs"]),
          _count(p["totals"]["snn_sops"]), _count(p["totals"]["snn_macs"]),
          f"{p['totals']['energy_ratio_snn_ann']:.3f}", f"{p['settle_step_mean']:.2f}",
          f"{100 * p['accuracy']:.1f}"]
         for r in results for p in [r["profile"]]],
        markdown=True,
    )  # fmt: skip
    out = [
        "# Export and profile",
        "",
        "Command: `OMP_NUM_THREADS=1 python benchmarks/export_profile.py --data-dir "
        f"../shared/data --resnet20 resnet20_snn.safetensors` ({args.images} test images per "
        "model; the ResNet-20 SNN converted as in the script's doc). Timings are the median of "
        "3 runs on one thread of a 2-core machine shared with other jobs: noisy, compare only "
        "within a row. Packages: " + packages() + ".",
        "",
        "## ONNX (unrolled over T, onnxruntime 1 thread vs convertsnn 1 thread, all images at once)",
        "",
        "'within 1e-4': the share of images whose logits all agree to 1e-4; the others differ "
        "because a membrane lies within float rounding of its threshold and onnxruntime sums "
        "convolutions in another order than torch, so one spike flips (docs/export.md).",
        "",
        onnx,
        "",
        "## NIR (read back by `convertsnn import`; simulated by Sinabs)",
        "",
        "Sinabs and convertsnn run the same NIR file (the default export, v_init spread over "
        "the T steps as bias), Sinabs with `SingleSpike` and no lower membrane bound (its "
        "defaults differ from convertsnn's IF, docs/export.md), convertsnn through `convertsnn "
        "import`, both with membranes starting at 0. 'import (drop)': the file exported with "
        "`--v-init drop` read back by `convertsnn import` (v_init restored from the metadata) "
        "against the original model. Accuracy: the model as converted (v_init = 0.5), the NIR "
        "graph with v_init as bias, and with v_init dropped (membranes from 0).",
        "",
        nir_table,
        "",
        "## Profile (per image, E_MAC = 4.6 pJ, E_AC = 0.9 pJ, Horowitz 2014, 45 nm fp32)",
        "",
        profile,
    ]
    for r in results:
        if "syops" in r:
            out += ["", f"## Operation counts against syops ({r['model']})", ""]
            check = r["syops"]
            if "error" in check:
                out.append(check["error"])
                continue
            out.append(
                "syops counts a layer's accumulates as dense operations (bias included) times the "
                "firing rate of its input, when the input is binary; otherwise it counts dense "
                "MACs. Ours count every non-zero input times the outputs it reaches (padding "
                "borders exact, no bias). Counts per image over T steps on the binary-spike model "
                "read back from the NIR file. The differences are syops' approximations: whole "
                "kernels at padding borders (a 3x3 conv with padding 1 on an 8x8 map has "
                "22^2 = 484 of 24^2 = 576 taps inside the map: ratio 1.19), bias additions "
                "(1 / (in_channels * k * k) more: 1.0625 for the 16-channel 1x1 conv "
                "`act_relu_2_scaled`), and one firing rate for all input positions where a "
                "strided conv reads only some. Linear layers agree exactly. The MAC rows "
                "(analog input) differ by the bias additions."
            )
            out += [
                "",
                format_table(
                    ["layer", "ours ACs", "syops ACs", "ratio", "ours MACs", "syops MACs"],
                    [
                        [
                            name,
                            _count(v["ours_sops"]),
                            _count(v["syops_acs"]),
                            f"{v['syops_acs'] / v['ours_sops']:.3f}" if v["ours_sops"] else "-",
                            _count(v["ours_macs"]),
                            _count(v["syops_macs"]),
                        ]
                        for name, v in check["layers"].items()
                    ],
                    markdown=True,
                ),
            ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
