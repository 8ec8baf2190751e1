"""jneuron: JAX-accelerated neuron-level analysis of neural networks.

The public face, grouped by family; the Flax adapters are ``jneuron.flax``, the models jneuron ships
``jneuron.models``, the pure kernels ``jneuron.kernels`` and plots and HTML reports ``jneuron.report``.

>>> import numpy as np, jneuron as jn
>>> acts = [np.random.default_rng(s).normal(size=(200, 8)) for s in range(3)]
>>> jn.maxcorr(acts).scores.shape
(24,)
"""

from jneuron import _interrupts  # noqa: F401  (first: Ctrl-C while the `jneuron` command starts is one line)

# Every public name below is imported when first used (PEP 562), so that `import jneuron` and the `jneuron`
# command's --help start without importing JAX; `from jneuron import x` and `jn.x` work as before.
_LAZY = {
    # Cross-model rankings (Bau et al., 2019)
    "linreg_ranking": "jneuron.crossmodel.linreg",
    "CrossModelRanking": "jneuron.crossmodel.maxcorr",
    "maxcorr": "jneuron.crossmodel.maxcorr",
    "mincorr": "jneuron.crossmodel.maxcorr",
    # Data: sources, files, stores, labels
    "open_activations": "jneuron.data.files",
    "Rows": "jneuron.data.source",
    "LabelledTokens": "jneuron.data.labels",
    "load_labels": "jneuron.data.labels",
    "as_source": "jneuron.data.source",
    "StoreWriter": "jneuron.data.store",
    "open_store": "jneuron.data.store",
    "write_store": "jneuron.data.store",
    # Errors and warnings
    "DeadNeuronWarning": "jneuron.errors",
    "FewTokensWarning": "jneuron.errors",
    "Float64UnavailableWarning": "jneuron.errors",
    "JNeuronError": "jneuron.errors",
    "StaleCheckpointWarning": "jneuron.errors",
    "QuantizationWarning": "jneuron.errors",
    # Information measures and cumulative ablation (Amjad et al., 2018)
    "CumulativeAblation": "jneuron.flax.cumulative_ablation",
    "balance_bias": "jneuron.flax.ablation",
    "cumulative_ablation": "jneuron.flax.cumulative_ablation",
    "NeuronInformation": "jneuron.information",
    "neuron_information": "jneuron.information",
    # Probing (NeuroX) and probeless ranking
    "AblationTable": "jneuron.probing.ablation",
    "retrain_ablation": "jneuron.probing.ablation",
    "zero_out_ablation": "jneuron.probing.ablation",
    "Probe": "jneuron.probing.probe",
    "ProbeGrid": "jneuron.probing.probe",
    "train_probe": "jneuron.probing.probe",
    "train_probes": "jneuron.probing.probe",
    "Probeless": "jneuron.probing.probeless",
    "probeless": "jneuron.probing.probeless",
    "Selection": "jneuron.probing.selection",
    "bottom_neurons": "jneuron.probing.selection",
    "neuron_ordering": "jneuron.probing.selection",
    "neuron_ordering_granular": "jneuron.probing.selection",
    "neuron_overlap": "jneuron.probing.selection",
    "ordering_cutoffs": "jneuron.probing.selection",
    "random_neurons": "jneuron.probing.selection",
    "threshold_neurons": "jneuron.probing.selection",
    "top_neurons": "jneuron.probing.selection",
    # Results
    "NeuronIndex": "jneuron.results",
    "Ranking": "jneuron.results",
    # Representational similarity, canonical directions and neuron matching
    "DirectionRanking": "jneuron.similarity.directions",
    "direction_ranking": "jneuron.similarity.directions",
    "Matching": "jneuron.similarity.matching",
    "SparsePrediction": "jneuron.similarity.matching",
    "match_neurons": "jneuron.similarity.matching",
    "sparse_prediction": "jneuron.similarity.matching",
    "SimilarityMatrix": "jneuron.similarity.matrix",
    "similarity_matrix": "jneuron.similarity.matrix",
    "similarity_matrices": "jneuron.similarity.matrix",
    "CCAResult": "jneuron.similarity.measures",
    "CKAResult": "jneuron.similarity.measures",
    "PWCCAResult": "jneuron.similarity.measures",
    "cca": "jneuron.similarity.measures",
    "cka": "jneuron.similarity.measures",
    "pwcca": "jneuron.similarity.measures",
    "svcca": "jneuron.similarity.measures",
    # Streaming: co-moments and device meshes
    "CoMoments": "jneuron.streaming.comoments",
    "comoments": "jneuron.streaming.comoments",
    "device_mesh": "jneuron.streaming.mesh",
}

__version__ = "0.1.0"

__all__ = [
    # errors and warnings
    "JNeuronError", "DeadNeuronWarning", "FewTokensWarning", "Float64UnavailableWarning", "StaleCheckpointWarning",
    "QuantizationWarning",
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
    "similarity_matrices", "SimilarityMatrix", "direction_ranking", "DirectionRanking", "match_neurons", "Matching",
    "sparse_prediction", "SparsePrediction",
    # probing
    "train_probe", "train_probes", "Probe", "ProbeGrid", "top_neurons", "bottom_neurons", "random_neurons",
    "threshold_neurons", "neuron_ordering", "neuron_ordering_granular", "ordering_cutoffs", "neuron_overlap",
    "Selection", "zero_out_ablation", "retrain_ablation", "AblationTable", "probeless", "Probeless",
    # information
    "neuron_information", "NeuronInformation", "cumulative_ablation", "CumulativeAblation", "balance_bias",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jneuron' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
