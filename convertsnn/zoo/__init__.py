"""The model zoo: robust SNNs (and their ANNs) by name, verified by sha256, rebuilt by recipe.

>>> from convertsnn import zoo
>>> zoo.list_models("*mnist*")
>>> snn = zoo.load("mnist_cnn_pgd_snn_t8")        # a ready SpikingNetwork

See docs/zoo.md for the index format and how to add a model.
"""

from convertsnn.zoo.hub import cache_dir
from convertsnn.zoo.loading import load, load_ann, pull, resolve_model_file
from convertsnn.zoo.registry import ZooEntry, list_models, load_index, model_info

__all__ = [
    "ZooEntry",
    "cache_dir",
    "list_models",
    "load",
    "load_ann",
    "load_index",
    "model_info",
    "pull",
    "resolve_model_file",
]
