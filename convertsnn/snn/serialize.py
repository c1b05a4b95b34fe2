"""One file per converted model: safetensors weights + JSON metadata, loaded without pickle.

The file is a plain safetensors file. Its string metadata holds one key, ``convertsnn``, with a
JSON document::

    {"format": "convertsnn.snn", "version": 1,
     "timesteps": 8, "encoder": "direct", "readout": "mean",
     "graph": {"modules": {NAME: {"type": "Conv2d", "config": {...}}},
               "buffers": [NAME, ...],            # constant tensors read by get_attr nodes
               "nodes": [{"name", "op", "target", "args", "kwargs"}, ...]},
     "metadata": {source, preprocessing, input_size, conversion, thresholds, versions, ...}}

``readout`` is ``mean`` or ``delay:D`` (see :class:`SpikingNetwork`); files without it (written
before it existed) read out the mean. A file with a delayed readout is written as version 2, so
that a convertsnn that predates the setting refuses it instead of averaging all steps; a file
with dithered neurons (a random initial membrane) as version 3, so that an older convertsnn
refuses it instead of failing on the unknown neuron setting.

Module types, functions and methods are looked up in :mod:`convertsnn.convert.ops`, so only
known layers are ever constructed. Writes go to a temporary file that is renamed into place, so
an interrupted save never leaves a broken file.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import fx, nn

from convertsnn.convert import ops
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.network import SpikingNetwork

FORMAT = "convertsnn.snn"
VERSION = 3  # 1: no readout setting (the mean over all steps); 2: delayed readout; 3: dither


def _encode(value: Any, where: str) -> Any:
    if isinstance(value, fx.Node):
        return {"$node": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        return {"$dict": {k: _encode(v, where) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"$slice": [_encode(v, where) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"$ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"$dtype": str(value).removeprefix("torch.")}
    raise ConvertSNNError(f"cannot save {where}: argument of type {type(value).__name__}")


def _decode(value: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(value, list):
        return [_decode(v, env) for v in value]
    if not isinstance(value, dict):
        return value
    (tag, inner), *_ = value.items()
    if tag == "$node":
        return env[inner]
    if tag == "$tuple":
        return tuple(_decode(v, env) for v in inner)
    if tag == "$dict":
        return {k: _decode(v, env) for k, v in inner.items()}
    if tag == "$slice":
        return slice(*(_decode(v, env) for v in inner))
    if tag == "$ellipsis":
        return Ellipsis
    if tag == "$dtype":
        return getattr(torch, inner)
    raise ConvertSNNError(f"unknown value tag '{tag}' in the model file")


def graph_to_json(gm: fx.GraphModule) -> dict:
    """Describe a GraphModule built from supported ops as JSON-serialisable data."""
    modules, buffers, nodes = {}, [], []
    for node in gm.graph.nodes:
        where = f"node '{node.name}'"
        target = node.target
        if node.op == "call_module":
            module = gm.get_submodule(target)
            type_name = ops.module_type_name(module)
            if type_name is None:
                raise ConvertSNNError(f"cannot save {where}: layer type {type(module).__name__}")
            modules[target] = {"type": type_name, "config": ops.MODULES[type_name][1](module)}
        elif node.op == "call_function":
            target = ops.function_name(node.target)
            if target is None:
                raise ConvertSNNError(f"cannot save {where}: function {node.target}")
        elif node.op == "get_attr":
            buffers.append(target)
        nodes.append(
            {
                "name": node.name,
                "op": node.op,
                "target": target,
                "args": _encode(node.args, where),
                "kwargs": _encode(node.kwargs, where),
            }
        )
    return {"modules": modules, "buffers": buffers, "nodes": nodes}


def _set_nested(root: nn.Module, name: str, module: nn.Module) -> None:
    *parents, leaf = name.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, nn.Module())
        root = getattr(root, part)
    root.add_module(leaf, module)


def graph_from_json(spec: dict, tensors: dict[str, torch.Tensor]) -> fx.GraphModule:
    """Rebuild a GraphModule from :func:`graph_to_json` data; ``tensors`` hold get_attr buffers."""
    root = nn.Module()
    for name, entry in spec["modules"].items():
        if entry["type"] not in ops.MODULES:
            raise ConvertSNNError(
                f"the model file uses layer type '{entry['type']}', unknown to this version of "
                "convertsnn; upgrade convertsnn"
            )
        _set_nested(root, name, ops.MODULES[entry["type"]][0](**entry["config"]))
    for name in spec["buffers"]:
        *parents, leaf = name.split(".")
        owner = root.get_submodule(".".join(parents)) if parents else root
        owner.register_buffer(leaf, tensors[f"body.{name}"])
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for entry in spec["nodes"]:
        op, target = entry["op"], entry["target"]
        if op == "call_function":
            if target not in ops.FUNCTIONS:
                raise ConvertSNNError(f"the model file calls unknown function '{target}'")
            target = ops.FUNCTIONS[target]
        elif op == "call_method" and target not in ops.METHODS:
            raise ConvertSNNError(f"the model file calls unknown method '{target}'")
        node = graph.create_node(
            op, target, _decode(entry["args"], env), _decode(entry["kwargs"], env), entry["name"]
        )
        env[entry["name"]] = node
    return fx.GraphModule(root, graph)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a saved model."""
    from convertsnn import __version__

    return {
        "convertsnn": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


TEMP_SUFFIX = ".convertsnn-tmp"  # temporary files are .NAME.HOST-PID.RANDOM.convertsnn-tmp


def _temp_owner_alive(name: str) -> bool:
    """Whether the process that created temporary file ``name`` may still be writing it."""
    marker = f".{platform.node()}-"
    at = name.rfind(marker)
    pid = name[at + len(marker) :].split(".", 1)[0] if at >= 0 else ""
    if not pid.isdigit():
        return True  # another machine's (a shared disk) or not ours: leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists
        return True
    return True


def sweep_temporary_files(folder: Path) -> None:
    """Remove temporary files of this machine's writers that died (e.g. SIGKILL) mid-write."""
    for leftover in folder.glob(f".*{TEMP_SUFFIX}"):
        if not _temp_owner_alive(leftover.name):
            leftover.unlink(missing_ok=True)


def _write_error(path: Path, err: OSError) -> ConvertSNNError:
    culprit = Path(err.filename) if err.filename else None  # shown when it is not our own file
    if culprit and culprit != path and culprit.is_file():
        return ConvertSNNError(
            f"cannot write {path}: {culprit} is a file, not a folder; choose another path"
        )
    where = f" ({culprit})" if culprit and culprit.parent != path.parent else ""
    return ConvertSNNError(
        f"cannot write {path}: {err.strerror or err}{where}; choose a writable file path"
    )


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, in one line, if ``path`` could not be written later (before long work).

    Nothing is created: the nearest existing folder above ``path`` must take a new file.
    """
    path = Path(path)
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder", str(path))
        if not folder.is_dir():
            raise NotADirectoryError(20, "not a folder", str(folder))
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise _write_error(path, err) from None


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``.

    The temporary file sits next to ``path`` and is named after this machine and process, so a
    later write to the same folder removes what a killed writer left behind. File-system
    failures (a parent that is a file, no permission, a full disk) are one-line errors.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_temporary_files(path.parent)
        prefix = f".{path.name}.{platform.node()}-{os.getpid()}."
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise _write_error(path, err) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_snn(snn: SpikingNetwork, path: str | os.PathLike) -> Path:
    """Write ``snn`` to ``path`` (safetensors + JSON metadata), atomically."""
    if not isinstance(snn, SpikingNetwork):
        raise ConvertSNNError(
            f"save_snn takes a SpikingNetwork (from convert or load_snn), got {type(snn).__name__}"
        )
    if not isinstance(snn.body, fx.GraphModule):
        raise ConvertSNNError("only converted models (torch.fx graphs) can be saved")
    metadata = dict(snn.metadata)
    metadata["versions"] = package_versions()
    metadata["thresholds"] = {k: v.tolist() for k, v in snn.thresholds.items()}
    document = {
        "format": FORMAT,
        "version": file_version(snn),
        "timesteps": snn.timesteps,
        "encoder": str(snn.encoder),
        "readout": snn.readout,
        "graph": graph_to_json(snn.body),
        "metadata": metadata,
    }
    state = {k: v.detach().cpu().contiguous().clone() for k, v in snn.state_dict().items()}
    path = Path(path)
    atomic_write(
        path, lambda tmp: save_file(state, tmp, metadata={"convertsnn": json.dumps(document)})
    )
    return path


def file_version(snn: SpikingNetwork) -> int:
    """The oldest format version that holds ``snn`` (older readers refuse newer files)."""
    if any(n.dither for n in snn.neurons()):
        return 3
    return 1 if snn.readout == "mean" else 2


def read_document(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON document and tensors of a convertsnn safetensors file, with one-line errors."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConvertSNNError(f"a model file is a path or a string, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise ConvertSNNError(f"model file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("convertsnn")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ConvertSNNError(
            f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})"
        ) from None
    if raw is None:
        raise ConvertSNNError(f"{path} is a safetensors file without convertsnn metadata")
    try:
        document = json.loads(raw)
    except json.JSONDecodeError:
        raise ConvertSNNError(f"{path}: the convertsnn metadata is not valid JSON") from None
    return document, tensors


def load_snn(path: str | os.PathLike, device: str | torch.device = "cpu") -> SpikingNetwork:
    """Load a model written by :func:`save_snn` (no pickle involved)."""
    document, tensors = read_document(path)
    if document.get("format") != FORMAT:
        raise ConvertSNNError(
            f"{path} holds a '{document.get('format')}' model, not a converted SNN"
        )
    if document.get("version", 0) > VERSION:
        raise ConvertSNNError(
            f"{path} was written by a newer convertsnn (format {document['version']}); upgrade"
        )
    try:
        body = graph_from_json(document["graph"], tensors)
        snn = SpikingNetwork(
            body,
            document["timesteps"],
            document.get("encoder", "direct"),
            document["metadata"],
            document.get("readout", "mean"),
        )
        snn.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise ConvertSNNError(
            f"{path}: the model file is damaged or inconsistent ({first})"
        ) from None
    return snn.to(device).eval()
