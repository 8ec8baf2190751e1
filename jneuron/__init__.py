"""jneuron: JAX-accelerated neuron-level analysis of neural networks.

>>> import numpy as np, jneuron as jn
>>> acts = [np.random.default_rng(s).normal(size=(200, 8)) for s in range(3)]
>>> jn.maxcorr(acts).scores.shape
(24,)
"""

from jneuron import _interrupts  # noqa: F401  (first: Ctrl-C while the `jneuron` command starts is one line)
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
from jneuron.sharding import device_mesh as device_mesh
from jneuron.sources import as_source as as_source
from jneuron.labels import LabelledTokens as LabelledTokens
from jneuron.labels import load_labels as load_labels
from jneuron.probe import Probe as Probe
from jneuron.probe import ProbeGrid as ProbeGrid
from jneuron.probe import train_probe as train_probe
from jneuron.probe import train_probes as train_probes
from jneuron.probe_ablation import AblationTable as AblationTable
from jneuron.probe_ablation import retrain_ablation as retrain_ablation
from jneuron.probe_ablation import zero_out_ablation as zero_out_ablation
from jneuron.probe_rankings import Selection as Selection
from jneuron.probe_rankings import bottom_neurons as bottom_neurons
from jneuron.probe_rankings import neuron_ordering as neuron_ordering
from jneuron.probe_rankings import neuron_ordering_granular as neuron_ordering_granular
from jneuron.probe_rankings import neuron_overlap as neuron_overlap
from jneuron.probe_rankings import ordering_cutoffs as ordering_cutoffs
from jneuron.probe_rankings import random_neurons as random_neurons
from jneuron.probe_rankings import threshold_neurons as threshold_neurons
from jneuron.probe_rankings import top_neurons as top_neurons
from jneuron.probeless import Probeless as Probeless
from jneuron.probeless import probeless as probeless
from jneuron.formats import open_activations as open
from jneuron.store import StoreWriter as StoreWriter
from jneuron.store import open_store as open_store
from jneuron.store import write_store as write_store
from jneuron.errors import FewTokensWarning as FewTokensWarning
from jneuron.errors import Float64UnavailableWarning as Float64UnavailableWarning
from jneuron.errors import StaleCheckpointWarning as StaleCheckpointWarning
from jneuron.similarity import CCAResult as CCAResult
from jneuron.similarity import CKAResult as CKAResult
from jneuron.similarity import PWCCAResult as PWCCAResult
from jneuron.similarity import cca as cca
from jneuron.similarity import cka as cka
from jneuron.similarity import pwcca as pwcca
from jneuron.similarity import svcca as svcca
from jneuron.simmatrix import SimilarityMatrix as SimilarityMatrix
from jneuron.simmatrix import similarity_matrix as similarity_matrix
from jneuron.heatmap import plot_similarity as plot_similarity
from jneuron.linreg import DirectionRanking as DirectionRanking
from jneuron.linreg import direction_ranking as direction_ranking
from jneuron.linreg import linreg_ranking as linreg_ranking
from jneuron.matching import Matching as Matching
from jneuron.matching import SparsePrediction as SparsePrediction
from jneuron.matching import match_neurons as match_neurons
from jneuron.matching import sparse_prediction as sparse_prediction

__version__ = "0.1.0"
