"""Neuron sets and orderings from probe weights (NeuroX's rules, deterministic: ties by index).

Every function takes a trained :class:`~jneuron.probing.probe.Probe` or a raw weight matrix ``(classes, neurons)``
(e.g. NeuroX's ``probe.linear.weight``); only ``|W|`` matters. The weight matrix is small, so the rules run
on the host in numpy (one sort per class, float64 sums): XLA's CPU sort is about 20x slower than numpy's.

>>> import numpy as np
>>> s = top_neurons(np.array([[5.0, 1, 1], [1, 10, 1]]), 0.5)
>>> s.union.tolist(), {c: v.tolist() for c, v in s.per_class.items()}
([0, 1], {0: [0], 1: [1]})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from jneuron.errors import JNeuronError
from jneuron.results import NeuronIndex, Ranking, Result, to_plain


@dataclass(frozen=True)
class Selection(Result):
    """Neurons chosen per class and their union.

    Attributes:
      union: flat neuron indices chosen for any class, ascending.
      per_class: class label -> neuron indices for that class, strongest first (ties by index).
      neurons: the identity of every neuron the indices point into.
    """

    union: np.ndarray
    per_class: dict
    neurons: NeuronIndex

    @property
    def counts(self) -> dict:
        """Neurons per class: few means a focused property, many a distributed one."""
        return {c: len(v) for c, v in self.per_class.items()}

    def overlap(self) -> dict:
        """Shared neurons between every pair of classes (see :func:`neuron_overlap`)."""
        return neuron_overlap(self.per_class)

    def to_dict(self) -> dict:
        """The union and the per-class choices as neuron records, JSON-ready."""
        def records(indices):
            return [self.neurons.record(int(i)) for i in indices]

        return {"union": records(self.union),
                "per_class": {str(to_plain(c)): records(v) for c, v in self.per_class.items()}}


def _weights(probe) -> tuple[np.ndarray, np.ndarray, NeuronIndex]:
    """``|W|`` as float32 ``(classes, neurons)``, the class labels and the neuron identities."""
    weight = np.asarray(getattr(probe, "weight", probe))
    if weight.ndim != 2 or 0 in weight.shape:
        raise JNeuronError(f"probe weights: expected a non-empty (classes, neurons) matrix, got {weight.shape}")
    if not np.all(np.isfinite(weight)):
        raise JNeuronError("probe weights: contain NaN or Inf")
    classes = getattr(probe, "classes", None)
    if classes is None or len(classes) != weight.shape[0]:
        classes = np.arange(weight.shape[0])
    neurons = getattr(probe, "neurons", None) or NeuronIndex.from_widths(("model",), (weight.shape[1],))
    return np.abs(weight).astype(np.float32), np.asarray(classes), neurons


def _sorted(abs_w: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row, neuron indices by ``|w|`` (descending or ascending; ties by index) and the sorted values:
    one sort of unique 64-bit keys (float32 bits above, index below), which numpy sorts with SIMD."""
    bits = abs_w.view(np.uint32).astype(np.uint64)  # non-negative float32 bits sort like the values
    if descending:
        bits = np.uint64(0xFFFFFFFF) - bits
    keys = (bits << np.uint64(32)) | np.arange(abs_w.shape[1], dtype=np.uint64)[None, :]
    keys.sort(axis=1)
    high = (keys >> np.uint64(32)).astype(np.uint32)
    values = (np.uint32(0xFFFFFFFF) - high if descending else high).view(np.float32)
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.intp), values


def _mass_ahead(abs_w: np.ndarray, descending: bool):
    """Sorted order, the mass ranked ahead of each sorted position (float64) and each class's total mass."""
    order, values = _sorted(abs_w, descending)
    cumulative = np.cumsum(values, axis=1, dtype=np.float64)
    ahead = np.zeros_like(cumulative)
    ahead[:, 1:] = cumulative[:, :-1]
    return order, ahead, cumulative[:, -1:]


def _mass_selection(abs_w: np.ndarray, fraction: float, descending: bool) -> np.ndarray:
    """NeuroX's rule, boolean ``(classes, neurons)``: per class the shortest sorted prefix whose cumulative
    ``|w|`` reaches ``fraction`` of the class's mass, the crossing neuron included (at least one neuron)."""
    order, ahead, total = _mass_ahead(abs_w, descending)
    chosen_sorted = ahead < total * fraction
    chosen_sorted[:, 0] = True
    chosen = np.zeros(abs_w.shape, bool)
    np.put_along_axis(chosen, order, chosen_sorted, axis=1)
    return chosen


def _entry_steps(abs_w: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron: the first step ``s`` (of ``0..stride``) at which it is in the union of top sets at
    ``s / stride`` of the mass (``stride + 1``: never), and the smallest share of a class's mass ranked
    ahead of it (which orders neurons within a step)."""
    order, ahead, total = _mass_ahead(abs_w, True)
    classes, width = abs_w.shape
    targets = total * (np.arange(stride + 1) / stride)[None, :]  # the selection's own comparison at s / stride
    step = np.empty((classes, width), np.int16 if stride < 32000 else np.int64)
    for row in range(classes):  # per class: sorted positions [pos_{s-1}, pos_s) enter at step s
        pos = np.searchsorted(ahead[row], targets[row], side="left")
        step[row] = np.repeat(np.arange(stride + 2), np.diff(pos, prepend=0, append=width))
    step[:, 0] = 0
    share = ahead / np.where(total > 0, total, 1.0)
    share[np.broadcast_to(total <= 0, share.shape)] = np.inf
    share[:, 0] = 0.0
    flat = (order + (np.arange(classes) * width)[:, None]).ravel()
    per_step = np.empty(step.size, step.dtype)
    per_share = np.empty(share.size)
    per_step[flat] = step.ravel()
    per_share[flat] = share.ravel()
    return per_step.reshape(classes, width).min(axis=0).astype(np.int64), per_share.reshape(classes, width).min(axis=0)


def _per_class(abs_w: np.ndarray, chosen: np.ndarray, classes: np.ndarray, neurons: NeuronIndex,
               descending: bool) -> Selection:
    per_class = {}
    for row, label in enumerate(classes):
        picked = np.flatnonzero(chosen[row])
        key = -abs_w[row, picked] if descending else abs_w[row, picked]
        per_class[label.item()] = picked[np.lexsort((picked, key))]
    return Selection(np.flatnonzero(chosen.any(axis=0)), per_class, neurons)


def _fraction(value: float, name: str) -> float:
    if not 0 <= value <= 1:
        raise JNeuronError(f"{name}: expected a fraction in [0, 1], got {value}")
    return float(value)


def top_neurons(probe, percentage: float) -> Selection:
    """Per class, the fewest neurons (largest ``|w|`` first) whose weight reaches ``percentage`` of the class's
    total ``|w|`` mass, the crossing neuron included (NeuroX ``get_top_neurons``); and their union."""
    abs_w, classes, neurons = _weights(probe)
    chosen = _mass_selection(abs_w, _fraction(percentage, "percentage"), descending=True)
    return _per_class(abs_w, chosen, classes, neurons, True)


def bottom_neurons(probe, percentage: float) -> Selection:
    """As :func:`top_neurons` from the smallest ``|w|`` up (NeuroX ``get_bottom_neurons``)."""
    abs_w, classes, neurons = _weights(probe)
    chosen = _mass_selection(abs_w, _fraction(percentage, "percentage"), descending=False)
    return _per_class(abs_w, chosen, classes, neurons, False)


def threshold_neurons(probe, fraction: float) -> Selection:
    """Per class, neurons with ``|w| > fraction * max|w|`` of that class (NeuroX's hard threshold with its
    ``fraction = f`` is ``fraction = 1 / f`` here)."""
    abs_w, classes, neurons = _weights(probe)
    chosen = abs_w > _fraction(fraction, "fraction") * abs_w.max(axis=1, keepdims=True)
    return _per_class(abs_w, chosen, classes, neurons, True)


def random_neurons(neurons: int, fraction: float, seed: int = 0) -> np.ndarray:
    """``round(fraction * neurons)`` distinct neurons drawn uniformly with ``seed``, ascending.

    >>> random_neurons(10, 0.3, seed=0).shape
    (3,)
    """
    count = int(round(_fraction(fraction, "fraction") * neurons))
    return np.sort(np.random.default_rng(seed).choice(neurons, size=count, replace=False))


def neuron_ordering(probe, stride: int = 100) -> Ranking:
    """All neurons in the order they join the union of top sets as the mass share grows 0, 1/stride, ... 1
    (NeuroX ``get_neuron_ordering``), deterministic within a step.

    Score: the share of its class's mass ranked ahead of the neuron (min over classes; lower ranks first),
    the continuous form of the step, so within a step neurons come by weight, ties by index. Details:
    ``step`` (0..stride; ``stride + 1`` for neurons never selected, e.g. all-zero weights).
    Use :func:`ordering_cutoffs` for NeuroX's cutoffs.

    >>> import numpy as np
    >>> r = neuron_ordering(np.array([[5.0, 1, 1], [1, 10, 1]]))
    >>> r.order.tolist(), ordering_cutoffs(r)[[0, 50, 100]].tolist()
    ([0, 1, 2], [2, 2, 3])
    """
    if stride < 1:
        raise JNeuronError(f"stride: expected a positive integer, got {stride}")
    abs_w, _, neurons = _weights(probe)
    step, share = _entry_steps(abs_w, int(stride))
    order = np.lexsort((np.arange(len(share)), share))
    step[order] = np.maximum.accumulate(step[order])  # rounding can never put a later neuron in an earlier step
    return Ranking("probe_ordering", share, neurons, descending=False, dead=getattr(probe, "dead", np.zeros(0, np.int64)),
                   details={"step": step.astype(np.int64)})


def neuron_ordering_granular(probe, granularity: int = 50, stride: int = 100) -> Ranking:
    """:func:`neuron_ordering` cut into chunks of about ``granularity`` neurons (NeuroX
    ``get_neuron_ordering_granular``): the same order; details ``chunk`` per neuron (``-1``: never selected).

    NeuroX stops at the last multiple of ``granularity`` and leaves the remaining neurons out of its
    ordering; here they form one last chunk.
    """
    if granularity < 1:
        raise JNeuronError(f"granularity: expected a positive integer, got {granularity}")
    ranking = neuron_ordering(probe, stride)
    step = ranking.details["step"]
    size = np.cumsum(np.bincount(step, minlength=stride + 2)[: stride + 1])  # union size at each step
    slides = [int(np.argmax(size >= i)) for i in range(0, len(step) + 1, granularity) if i <= size[-1]]
    ends = np.unique(np.asarray(slides))
    chunk = np.where(step <= stride, np.searchsorted(ends, step), -1)
    return Ranking("probe_ordering_granular", ranking.scores, ranking.neurons, descending=False, dead=ranking.dead,
                   details={"step": step, "chunk": chunk.astype(np.int64)})


def ordering_cutoffs(ranking: Ranking, stride: int = 100) -> np.ndarray:
    """NeuroX's cutoffs: after each step ``0..stride`` (or each granular chunk), how many neurons are placed."""
    chunk = ranking.details.get("chunk")
    if chunk is not None:
        return np.cumsum(np.bincount(chunk[chunk >= 0]))
    step = ranking.details["step"]
    return np.cumsum(np.bincount(step[step <= stride], minlength=stride + 1))


def neuron_overlap(sets: Mapping) -> dict:
    """Pairwise overlap of named neuron sets (classes of one probe, or properties from several probes).

    Returns ``{"names", "sizes", "shared" (k, k), "jaccard" (k, k)}``.

    >>> neuron_overlap({"a": [0, 1, 2], "b": [2, 3]})["jaccard"][0, 1]
    np.float64(0.25)
    """
    names = list(sets)
    members = [set(np.asarray(sets[n]).astype(np.int64).tolist()) for n in names]
    shared = np.array([[len(a & b) for b in members] for a in members], dtype=np.int64)
    union = np.array([[len(a | b) for b in members] for a in members], dtype=np.int64)
    jaccard = np.where(union > 0, shared / np.maximum(union, 1), 1.0)
    return {"names": names, "sizes": [len(m) for m in members], "shared": shared, "jaccard": jaccard}
