"""jneuron: JAX-accelerated neuron-level analysis of neural networks.

>>> import numpy as np, jneuron as jn
>>> acts = [np.random.default_rng(s).normal(size=(200, 8)) for s in range(3)]
>>> jn.maxcorr(acts).scores.shape
(24,)
"""

from jneuron.crossmodel import CrossModelRanking as CrossModelRanking
from jneuron.crossmodel import maxcorr as maxcorr
from jneuron.crossmodel import mincorr as mincorr
from jneuron.errors import DeadNeuronWarning as DeadNeuronWarning
from jneuron.errors import JNeuronError as JNeuronError
from jneuron.moments import CoMoments as CoMoments
from jneuron.moments import comoments as comoments
from jneuron.ranking import NeuronIndex as NeuronIndex
from jneuron.ranking import Ranking as Ranking
from jneuron.sources import as_source as as_source
from jneuron.errors import FewTokensWarning as FewTokensWarning
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
