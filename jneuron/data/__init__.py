"""Where rows come from: the Source protocol, arrays, files (.npy/.npz, NeuroX), zarr stores, bundled data.

>>> from jneuron.data import load_digits
>>> load_digits().images.shape
(1797, 64)
"""

from jneuron.data.bundled import Dataset as Dataset
from jneuron.data.bundled import load_digits as load_digits
