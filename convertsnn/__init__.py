"""convertsnn: turn adversarially trained ANNs into adversarially robust spiking networks."""

__version__ = "0.1.0"

from convertsnn import zoo
from convertsnn.convert import convert
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.serialize import load_snn, save_snn

__all__ = ["SpikingNetwork", "__version__", "convert", "load_snn", "save_snn", "zoo"]
