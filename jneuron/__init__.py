"""jneuron: JAX-accelerated neuron-level analysis of neural networks.

>>> import numpy as np, jneuron as jn
>>> acts = [np.random.default_rng(s).normal(size=(200, 8)) for s in range(3)]
>>> jn.maxcorr(acts).scores.shape
(24,)
"""

from jneuron.crossmodel import CrossModelRanking as CrossModelRanking
from jneuron.crossmodel import maxcorr as maxcorr
from jneuron.crossmodel import mincorr as mincorr
from jneuron.cumulative_ablation import CumulativeAblation as CumulativeAblation
from jneuron.cumulative_ablation import balance_bias as balance_bias
from jneuron.cumulative_ablation import cumulative_ablation as cumulative_ablation
from jneuron.errors import DeadNeuronWarning as DeadNeuronWarning
from jneuron.errors import JNeuronError as JNeuronError
from jneuron.information import NeuronInformation as NeuronInformation
from jneuron.information import neuron_information as neuron_information
from jneuron.moments import CoMoments as CoMoments
from jneuron.moments import comoments as comoments
from jneuron.ranking import NeuronIndex as NeuronIndex
from jneuron.ranking import Ranking as Ranking
from jneuron.sources import as_source as as_source

__version__ = "0.1.0"
