"""jneuron: JAX-accelerated neuron-level analysis of neural networks.

The public face, grouped by family; the Flax adapters are ``jneuron.flax``, the models jneuron ships
``jneuron.models``, the pure kernels ``jneuron.kernels`` and plots and HTML reports ``jneuron.report``.

>>> import numpy as np, jneuron as jn
>>> acts = [np.random.default_rng(s).normal(size=(200, 8)) for s in range(3)]
>>> jn.maxcorr(acts).scores.shape
(24,)
"""

from jneuron import _interrupts  # noqa: F401  (first: Ctrl-C while the `jneuron` command starts is one line)

# Cross-model rankings (Bau et al., 2019)
from jneuron.crossmodel.linreg import linreg_ranking as linreg_ranking
from jneuron.crossmodel.maxcorr import CrossModelRanking as CrossModelRanking
from jneuron.crossmodel.maxcorr import maxcorr as maxcorr
from jneuron.crossmodel.maxcorr import mincorr as mincorr

# Data: sources, files, stores, labels
from jneuron.data.files import open_activations as open_activations
from jneuron.data.labels import LabelledTokens as LabelledTokens
from jneuron.data.labels import load_labels as load_labels
from jneuron.data.source import Rows as Rows
from jneuron.data.source import as_source as as_source
from jneuron.data.store import StoreWriter as StoreWriter
from jneuron.data.store import open_store as open_store
from jneuron.data.store import write_store as write_store

# Errors and warnings
from jneuron.errors import DeadNeuronWarning as DeadNeuronWarning
from jneuron.errors import FewTokensWarning as FewTokensWarning
from jneuron.errors import Float64UnavailableWarning as Float64UnavailableWarning
from jneuron.errors import JNeuronError as JNeuronError
from jneuron.errors import StaleCheckpointWarning as StaleCheckpointWarning

# Information measures and cumulative ablation (Amjad et al., 2018)
from jneuron.flax.cumulative_ablation import CumulativeAblation as CumulativeAblation
from jneuron.flax.cumulative_ablation import balance_bias as balance_bias
from jneuron.flax.cumulative_ablation import cumulative_ablation as cumulative_ablation
from jneuron.information import NeuronInformation as NeuronInformation
from jneuron.information import neuron_information as neuron_information

# Probing (NeuroX) and probeless ranking
from jneuron.probing.ablation import AblationTable as AblationTable
from jneuron.probing.ablation import retrain_ablation as retrain_ablation
from jneuron.probing.ablation import zero_out_ablation as zero_out_ablation
from jneuron.probing.probe import Probe as Probe
from jneuron.probing.probe import ProbeGrid as ProbeGrid
from jneuron.probing.probe import train_probe as train_probe
from jneuron.probing.probe import train_probes as train_probes
from jneuron.probing.probeless import Probeless as Probeless
from jneuron.probing.probeless import probeless as probeless
from jneuron.probing.selection import Selection as Selection
from jneuron.probing.selection import bottom_neurons as bottom_neurons
from jneuron.probing.selection import neuron_ordering as neuron_ordering
from jneuron.probing.selection import (
    neuron_ordering_granular as neuron_ordering_granular,
)
from jneuron.probing.selection import neuron_overlap as neuron_overlap
from jneuron.probing.selection import ordering_cutoffs as ordering_cutoffs
from jneuron.probing.selection import random_neurons as random_neurons
from jneuron.probing.selection import threshold_neurons as threshold_neurons
from jneuron.probing.selection import top_neurons as top_neurons

# Results
from jneuron.results import NeuronIndex as NeuronIndex
from jneuron.results import Ranking as Ranking

# Representational similarity, canonical directions and neuron matching
from jneuron.similarity.directions import DirectionRanking as DirectionRanking
from jneuron.similarity.directions import direction_ranking as direction_ranking
from jneuron.similarity.matching import Matching as Matching
from jneuron.similarity.matching import SparsePrediction as SparsePrediction
from jneuron.similarity.matching import match_neurons as match_neurons
from jneuron.similarity.matching import sparse_prediction as sparse_prediction
from jneuron.similarity.matrix import SimilarityMatrix as SimilarityMatrix
from jneuron.similarity.matrix import similarity_matrix as similarity_matrix
from jneuron.similarity.measures import CCAResult as CCAResult
from jneuron.similarity.measures import CKAResult as CKAResult
from jneuron.similarity.measures import PWCCAResult as PWCCAResult
from jneuron.similarity.measures import cca as cca
from jneuron.similarity.measures import cka as cka
from jneuron.similarity.measures import pwcca as pwcca
from jneuron.similarity.measures import svcca as svcca

# Streaming: co-moments and device meshes
from jneuron.streaming.comoments import CoMoments as CoMoments
from jneuron.streaming.comoments import comoments as comoments
from jneuron.streaming.mesh import device_mesh as device_mesh

__version__ = "0.1.0"

__all__ = [
    # errors and warnings
    "JNeuronError", "DeadNeuronWarning", "FewTokensWarning", "Float64UnavailableWarning", "StaleCheckpointWarning",
    # results
    "NeuronIndex", "Ranking",
    # data
    "open_activations", "as_source", "Rows", "open_store", "write_store", "StoreWriter", "load_labels",
    "LabelledTokens",
    # streaming
    "comoments", "CoMoments", "device_mesh",
    # cross-model rankings
    "maxcorr", "mincorr", "CrossModelRanking", "linreg_ranking",
    # similarity
    "cca", "svcca", "pwcca", "cka", "CCAResult", "PWCCAResult", "CKAResult", "similarity_matrix",
    "SimilarityMatrix", "direction_ranking", "DirectionRanking", "match_neurons", "Matching",
    "sparse_prediction", "SparsePrediction",
    # probing
    "train_probe", "train_probes", "Probe", "ProbeGrid", "top_neurons", "bottom_neurons", "random_neurons",
    "threshold_neurons", "neuron_ordering", "neuron_ordering_granular", "ordering_cutoffs", "neuron_overlap",
    "Selection", "zero_out_ablation", "retrain_ablation", "AblationTable", "probeless", "Probeless",
    # information
    "neuron_information", "NeuronInformation", "cumulative_ablation", "CumulativeAblation", "balance_bias",
]
