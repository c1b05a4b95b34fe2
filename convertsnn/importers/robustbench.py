"""RobustBench models: ``robustbench:DATASET/THREAT/NAME`` (e.g. ``cifar10/Linf/Carmon2019Unlabeled``).

Loading goes through ``robustbench.utils.load_model`` so RobustBench's own architectures, its
in-model normalisation and its file layout are used: a checkpoint already at
``MODEL_DIR/DATASET/THREAT/NAME.pt`` loads offline; a missing one is downloaded by RobustBench
(online only). RobustBench models take images in [0, 1]. Checkpoints are read by torch.load with
``weights_only=True`` passed explicitly (robustbench's own call is replaced, see
:mod:`convertsnn._compat.robustbench`), so pickled code is never run, whatever torch's default or
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

from convertsnn._compat.robustbench import import_robustbench
from convertsnn.errors import ConvertSNNError
from convertsnn.importers.base import LoadedANN, Preprocessing

_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


def _first_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:300] if text else type(err).__name__


def parse_spec(spec: str) -> tuple[str, str, str]:
    """``"cifar10/Linf/NAME"`` -> (dataset, threat model, name), checked against the zoo."""
    parts = spec.split("/")
    if len(parts) != 3 or not all(parts):
        raise ConvertSNNError(
            f"robustbench source '{spec}' should be DATASET/THREAT/NAME, e.g. "
            "robustbench:cifar10/Linf/Carmon2019Unlabeled"
        )
    dataset, threat, name = parts
    import_robustbench()
    from robustbench.model_zoo import model_dicts

    datasets = {d.value: d for d in model_dicts}
    if dataset not in datasets:
        raise ConvertSNNError(
            f"unknown RobustBench dataset '{dataset}'; choose one of {', '.join(datasets)}"
        )
    threats = {t.value: t for t in model_dicts[datasets[dataset]]}
    if threat not in threats:
        raise ConvertSNNError(
            f"unknown RobustBench threat model '{threat}' for {dataset}; choose one of "
            f"{', '.join(threats)}"
        )
    names = model_dicts[datasets[dataset]][threats[threat]]
    if name not in names:
        close = [n for n in names if n.lower().startswith(name.lower()[:6])][:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConvertSNNError(f"RobustBench has no model '{name}' for {dataset}/{threat}{hint}")
    return dataset, threat, name


def _input_size(dataset: str, threat: str, name: str) -> tuple[int, int, int]:
    if dataset != "imagenet":
        return (3, 32, 32)
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    entry = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][name]
    match = re.search(r"(\d+)$", str(entry.get("preprocessing") or ""))
    side = int(match.group(1)) if match else 224
    return (3, side, side)


def load_robustbench(
    spec: str,
    model_dir: str | os.PathLike = "./models",
    preprocessing: Preprocessing | None = None,
) -> LoadedANN:
    """Load a RobustBench model (normalisation inside, images in [0, 1])."""
    dataset, threat, name = parse_spec(spec)
    rb = import_robustbench()
    path = Path(model_dir) / dataset / threat / f"{name}.pt"
    try:
        model = rb.utils.load_model(
            name, model_dir=str(model_dir), dataset=dataset, threat_model=threat
        )
    except pickle.UnpicklingError as err:
        raise ConvertSNNError(
            f"{path} cannot be loaded safely with weights_only=True ({_first_line(err)}); "
            "re-save only its state_dict with torch.save"
        ) from None
    except RuntimeError as err:
        if path.is_file():
            raise ConvertSNNError(
                f"{path} does not fit RobustBench model {dataset}/{threat}/{name}: "
                f"{_first_line(err)}"
            ) from None
        raise ConvertSNNError(
            f"RobustBench checkpoint {path} not found and could not be downloaded "
            f"({_first_line(err)}); download it and put it there, or pass --model-dir"
        ) from None
    except Exception as err:
        if path.is_file():
            raise ConvertSNNError(
                f"RobustBench could not load {path} ({type(err).__name__}: {_first_line(err)})"
            ) from None
        raise ConvertSNNError(
            f"RobustBench checkpoint {path} not found and could not be downloaded "
            f"({type(err).__name__}: {_first_line(err)}); download it and put it there, or pass "
            "--model-dir"
        ) from None
    prep = Preprocessing(
        input_size=_input_size(dataset, threat, name), num_classes=_CLASSES.get(dataset)
    ).updated(preprocessing)
    if prep.mean is not None or prep.std is not None:
        raise ConvertSNNError(
            "RobustBench models normalise their input inside the model; do not pass --mean/--std"
        )
    source = {"type": "robustbench", "dataset": dataset, "threat_model": threat, "name": name}
    return LoadedANN(model.eval(), prep, source)
