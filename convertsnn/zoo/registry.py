"""The model zoo index: one entry per published model, read from ``model_zoo/index.yaml``.

The index is a table, not code (as timm's pretrained configs and RobustBench's model list)::

    format: convertsnn.zoo
    version: 1
    models:
      - name: mnist_cnn_pgd_snn_t8       # unique, used by load(NAME) and `convertsnn zoo`
        kind: snn                        # snn (a save_snn file) or ann (a save_ann file)
        description: one line
        architecture: mnist_cnn          # name in convertsnn.models
        dataset: mnist
        source: the source ANN (zoo name or file) the model was converted from
        timesteps: 8                     # T (null for an ANN)
        neuron: if                       # if / lif / dlif (null for an ANN)
        objective: none                  # finetuning / training objective
        recipe: recipes/zoo/NAME.yaml    # pipeline recipe that builds the file (relative to
                                         # the index's parent folder; `convertsnn zoo build`)
        file: mnist_cnn_pgd_snn_t8.safetensors     # relative to the index, or
        url: https://.../model.safetensors         # https:// or file:// (downloaded to the cache)
        sha256: 64 hex digits
        size: 123456                     # bytes (optional; checked when present)
        metrics:                         # one block per evaluation
          - suite: pgd20                 # name of the evaluation suite / attack
            data: mnist.npz test split (10000 images)
            command: convertsnn evaluate zoo:NAME ...
            values: {clean: 0.98, pgd20@0.1: 0.93}

``file`` and ``url`` are exclusive. Which index is read: the ``index`` argument, else the
``CONVERTSNN_ZOO_INDEX`` environment variable, else ``model_zoo/index.yaml`` of the source
checkout this package lives in, else the copy a wheel installs to
``<sys.prefix>/share/convertsnn/model_zoo/index.yaml``.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convertsnn.errors import ConvertSNNError

INDEX_FORMAT = "convertsnn.zoo"
INDEX_VERSION = 1
INDEX_ENV = "CONVERTSNN_ZOO_INDEX"
CHECKOUT_INDEX = Path(__file__).resolve().parents[2] / "model_zoo" / "index.yaml"
INSTALLED_INDEX = Path(sys.prefix) / "share" / "convertsnn" / "model_zoo" / "index.yaml"
KINDS = ("snn", "ann")
URL_SCHEMES = ("https://", "file://")

_REQUIRED = ("name", "kind", "architecture", "dataset", "sha256")
_OPTIONAL = (
    "description", "source", "timesteps", "neuron", "objective", "recipe", "file", "url",
    "size", "metrics",
)  # fmt: skip
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Metrics:
    """Results of one evaluation of a zoo model: ``values`` are accuracies in [0, 1]."""

    suite: str
    data: str
    command: str
    values: dict[str, float]

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Metrics:
        if not isinstance(data, dict) or not isinstance(data.get("values"), dict):
            raise ConvertSNNError(f"{where}: each metrics block needs suite, data, command, values")
        missing = [k for k in ("suite", "data", "command") if not data.get(k)]
        if missing:
            raise ConvertSNNError(f"{where}: metrics block without {', '.join(missing)}")
        values = {}
        for key, value in data["values"].items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConvertSNNError(f"{where}: metric '{key}' is not a number")
            values[str(key)] = float(value)
        return cls(str(data["suite"]), str(data["data"]), str(data["command"]), values)


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo (see the module doc for the fields)."""

    name: str
    kind: str
    architecture: str
    dataset: str
    sha256: str
    index_dir: Path
    description: str = ""
    source: str | None = None
    timesteps: int | None = None
    neuron: str | None = None
    objective: str | None = None
    recipe: str | None = None
    file: str | None = None
    url: str | None = None
    size: int | None = None
    metrics: tuple[Metrics, ...] = field(default_factory=tuple)

    @classmethod
    def from_dict(cls, data: Any, index_dir: Path, where: str) -> ZooEntry:
        """Validate one index entry; every problem is a one-line error naming the entry."""
        if not isinstance(data, dict):
            raise ConvertSNNError(f"{where}: each model entry must be a mapping")
        where = f"{where}: model '{data.get('name', '?')}'"
        missing = [k for k in _REQUIRED if not data.get(k)]
        if missing:
            raise ConvertSNNError(f"{where} lacks {', '.join(missing)}")
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise ConvertSNNError(f"{where} has unknown field(s) {', '.join(unknown)}")
        if data["kind"] not in KINDS:
            raise ConvertSNNError(f"{where}: kind must be one of {', '.join(KINDS)}")
        sha = str(data["sha256"]).lower()
        if not _SHA256.match(sha):
            raise ConvertSNNError(f"{where}: sha256 must be 64 hex digits")
        if bool(data.get("file")) == bool(data.get("url")):
            raise ConvertSNNError(f"{where} needs exactly one of file or url")
        url = data.get("url")
        if url and not str(url).startswith(URL_SCHEMES):
            raise ConvertSNNError(f"{where}: url must start with {' or '.join(URL_SCHEMES)}")
        size = data.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ConvertSNNError(f"{where}: size must be a number of bytes")
        metrics = tuple(Metrics.from_dict(m, where) for m in data.get("metrics") or ())
        return cls(
            name=str(data["name"]),
            kind=data["kind"],
            architecture=str(data["architecture"]),
            dataset=str(data["dataset"]),
            sha256=sha,
            index_dir=index_dir,
            description=str(data.get("description") or ""),
            source=data.get("source"),
            timesteps=data.get("timesteps"),
            neuron=data.get("neuron"),
            objective=data.get("objective"),
            recipe=data.get("recipe"),
            file=data.get("file"),
            url=url,
            size=size,
            metrics=metrics,
        )

    @property
    def location(self) -> str:
        """Where the file comes from: a path relative to the index, or a URL."""
        return self.url or str(self.file)

    def local_file(self) -> Path | None:
        """The path of a ``file`` entry (resolved against the index folder); None for URLs."""
        if self.file is None:
            return None
        path = Path(self.file).expanduser()
        return path if path.is_absolute() else self.index_dir / path

    def recipe_file(self) -> Path | None:
        """The entry's recipe, resolved against the folder above the index's folder."""
        if not self.recipe:
            return None
        path = Path(self.recipe).expanduser()
        return path if path.is_absolute() else self.index_dir.parent / path

    def to_dict(self) -> dict:
        """The entry as plain data (as in the index, plus nothing computed)."""
        out = {k: getattr(self, k) for k in (*_REQUIRED, *_OPTIONAL)}
        out["metrics"] = [
            {"suite": m.suite, "data": m.data, "command": m.command, "values": m.values}
            for m in self.metrics
        ]
        return out


@dataclass(frozen=True)
class ZooIndex:
    """All entries of one index file, by name."""

    path: Path
    entries: dict[str, ZooEntry]

    def names(self, pattern: str | None = None) -> list[str]:
        """Entry names, sorted; ``pattern`` filters with shell wildcards (``*mnist*``)."""
        names = sorted(self.entries)
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names

    def get(self, name: str) -> ZooEntry:
        """The entry called ``name``, or a one-line error suggesting close names."""
        if name in self.entries:
            return self.entries[name]
        close = difflib.get_close_matches(name, list(self.entries), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConvertSNNError(
            f"unknown zoo model '{name}'{hint}; `convertsnn zoo list` shows the "
            f"{len(self.entries)} models of {self.path}"
        )


def index_path(index: str | os.PathLike | None = None) -> Path:
    """The index file to read: the argument, ``$CONVERTSNN_ZOO_INDEX``, the checkout's, or the
    installed one."""
    if index or os.environ.get(INDEX_ENV):
        return Path(index or os.environ[INDEX_ENV]).expanduser()
    return CHECKOUT_INDEX if CHECKOUT_INDEX.is_file() else INSTALLED_INDEX


def load_index(index: str | os.PathLike | None = None) -> ZooIndex:
    """Read and validate a zoo index (YAML; JSON is valid YAML too)."""
    path = index_path(index)
    if not path.is_file():
        raise ConvertSNNError(
            f"zoo index not found: {path}; set {INDEX_ENV} to an index.yaml "
            "(the default one is model_zoo/index.yaml of a source checkout)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0]
        raise ConvertSNNError(f"{path} is not valid YAML ({first})") from None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise ConvertSNNError(f"{path} is not a convertsnn zoo index (format: {INDEX_FORMAT})")
    if data.get("version", 0) > INDEX_VERSION:
        raise ConvertSNNError(f"{path} is a newer zoo index (version {data['version']}); upgrade")
    entries: dict[str, ZooEntry] = {}
    for item in data.get("models") or []:
        entry = ZooEntry.from_dict(item, path.parent, str(path))
        if entry.name in entries:
            raise ConvertSNNError(f"{path}: model name '{entry.name}' appears twice")
        entries[entry.name] = entry
    return ZooIndex(path, entries)


def list_models(pattern: str | None = None, index: str | os.PathLike | None = None) -> list[str]:
    """Names of the zoo models, sorted; ``pattern`` filters with shell wildcards (``*mnist*``)."""
    return load_index(index).names(pattern)


def model_info(name: str, index: str | os.PathLike | None = None) -> ZooEntry:
    """The index entry of the zoo model ``name``."""
    return load_index(index).get(name)
