"""timm models: ``timm:NAME``, with local weights (``weights=FILE``) or timm's own download.

Local weights are read safely (safetensors, or torch.load with weights_only=True; timm's own
downloads are loaded weights-only too, :mod:`convertsnn._compat.robustbench`) and handed
to timm as a state dict, so timm's checkpoint filters still apply; the classifier size is taken
from the file, so a fine-tuned head loads strictly instead of being dropped. Mean, std and input
size come from timm's data config (``timm.data.resolve_data_config``) and are put inside the
model, which takes images in [0, 1].
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from convertsnn._compat.robustbench import TIMM_CHECKPOINT_LOADERS, force_weights_only_loads
from convertsnn.errors import ConvertSNNError
from convertsnn.importers.base import LoadedANN, Preprocessing, with_normalization
from convertsnn.importers.checkpoint import read_state_dict
from convertsnn.offline import why_unreachable

HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches from the hub


def _first_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:300] if text else type(err).__name__


def _classifier_size(name: str, state: dict) -> int | None:
    """Number of classes of the classifier stored in ``state`` (timm's cfg names the layer)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    classifier = getattr(cfg, "classifier", None)
    classifier = classifier[0] if isinstance(classifier, (list, tuple)) else classifier
    weight = state.get(f"{classifier}.weight") if classifier else None
    return int(weight.shape[0]) if weight is not None else None


def _check_hub_reachable(name: str) -> None:
    """Fail at once, not after a minute of retries, when weights must come from an unreachable
    Hugging Face hub (weights already in the hub cache load offline)."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    if not hub_id or any(
        isinstance(try_to_load_from_cache(hub_id, file), str) for file in HUB_WEIGHT_FILES
    ):
        return
    reason = why_unreachable("huggingface.co")
    if reason:
        raise ConvertSNNError(
            f"could not get pretrained weights for timm model '{name}': huggingface.co cannot be "
            f"reached ({reason}); download them and pass --weights FILE"
        )


def load_timm(
    name: str,
    weights: str | os.PathLike | None = None,
    model_kwargs: dict | None = None,
    preprocessing: Preprocessing | None = None,
) -> LoadedANN:
    """Create timm model ``name`` with pretrained weights (a local file, or timm's hub)."""
    with warnings.catch_warnings():  # timm's import trips torch.jit deprecation warnings
        warnings.simplefilter("ignore", FutureWarning)
        import timm
        import timm.data
    force_weights_only_loads(TIMM_CHECKPOINT_LOADERS)

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConvertSNNError(f"timm has no model '{name}'{hint}")
    kwargs = dict(model_kwargs or {})
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ConvertSNNError(f"weights file not found: {path}")
        state, _ = read_state_dict(path)
        classes = kwargs.get("num_classes") or _classifier_size(name, state)
        if classes is not None:
            kwargs["num_classes"] = classes
        overlay = {"state_dict": state, **({"num_classes": classes} if classes else {})}
        try:
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
            )
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise ConvertSNNError(
                f"{path} does not fit timm model '{name}': {_first_line(err)}"
            ) from None
    else:
        _check_hub_reachable(name)
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:
            raise ConvertSNNError(
                f"could not get pretrained weights for timm model '{name}' "
                f"({type(err).__name__}: {_first_line(err)}); download them and pass "
                "--weights FILE"
            ) from None
    config = timm.data.resolve_data_config({}, model=model)
    prep = Preprocessing(
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        input_size=tuple(config["input_size"]),
        num_classes=model.num_classes,
    ).updated(preprocessing)
    source = {
        "type": "timm",
        "name": name,
        "weights": Path(weights).name if weights is not None else "timm hub",
        "model_kwargs": kwargs,
    }
    return LoadedANN(with_normalization(model.eval(), prep), prep, source)
