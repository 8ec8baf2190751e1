"""Ablation in the probe (Dalvi et al., AAAI 2019): accuracy when only the top, bottom or random N% of the
neurons are kept (or removed), by zeroing the others in a trained probe or by retraining on the kept ones.

Every variant is a neuron mask; all masks of a table are evaluated, or trained, together in one compiled
call (the masks are a batch axis of the probe weights).

>>> import numpy as np, jneuron as jn
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 2, 800); x = rng.normal(size=(800, 20)).astype(np.float32); x[:, 3] += 3.0 * y
>>> probe = jn.train_probe(x, y, epochs=3, learning_rate=1e-2)
>>> table = zero_out_ablation(probe, x, y, [0.05, 0.5])
>>> table.top[0] > table.bottom[0], table.counts.tolist()
(np.True_, [1, 10])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from jneuron.errors import JNeuronError
from jneuron.probing import probe as jprobe
from jneuron.probing.selection import neuron_ordering, random_neurons
from jneuron.results import Ranking, Result, to_plain
from jneuron.streaming.mesh import resolve_mesh

_KINDS = ("top", "bottom", "random")


@dataclass(frozen=True)
class AblationTable(Result):
    """Accuracy with all neurons and with the top, bottom and random share of them (the paper's table).

    Attributes:
      mode: ``"keep"`` / ``"remove"`` (zero-out in the trained probe) or ``"retrain"``.
      percentages: shares of neurons selected (0..1); ``counts``: neurons selected at each.
      all: accuracy with every neuron; ``top``, ``bottom``, ``random``: accuracy at each share.
    """

    mode: str
    percentages: np.ndarray
    counts: np.ndarray
    all: float
    top: np.ndarray
    bottom: np.ndarray
    random: np.ndarray

    def to_dict(self) -> dict:
        """The table as JSON-ready plain Python."""
        return {"mode": self.mode, "all": self.all,
                **{k: to_plain(getattr(self, k)) for k in ("percentages", "counts", *_KINDS)}}


def selection_masks(ordering: Ranking, percentages: Sequence[float], seed: int = 0):
    """Masks ``(1 + 3 * len(percentages), neurons)``: all neurons, then top, bottom and random at each share
    (top/bottom: the first/last ``round(p * neurons)`` of ``ordering``; random: seeded, distinct)."""
    shares = np.asarray(percentages, np.float64)
    if shares.ndim != 1 or len(shares) == 0 or np.any((shares <= 0) | (shares > 1)):
        raise JNeuronError(f"percentages: expected shares of neurons in (0, 1], got {percentages!r}")
    order = ordering.order
    width = len(order)
    counts = np.maximum(1, np.round(shares * width).astype(np.int64))
    masks = np.zeros((1 + 3 * len(shares), width), np.float32)
    masks[0] = 1
    for i, (share, k) in enumerate(zip(shares, counts)):
        masks[1 + i, order[:k]] = 1
        masks[1 + len(shares) + i, order[width - k:]] = 1
        masks[1 + 2 * len(shares) + i, random_neurons(width, k / width, seed + i)] = 1
    return shares, counts, masks


def _table(mode: str, shares, counts, accuracy) -> AblationTable:
    p = len(shares)
    return AblationTable(mode, shares, counts, float(accuracy[0]), accuracy[1:1 + p], accuracy[1 + p:1 + 2 * p],
                         accuracy[1 + 2 * p:])


def zero_out_ablation(probe: jprobe.Probe, x, labels, percentages: Sequence[float] = (0.1, 0.2, 0.5), *,
             ordering: Ranking | None = None, mode: str = "keep", seed: int = 0) -> AblationTable:
    """Accuracy of a trained probe when only the selected neurons are kept (``mode="remove"``: the selected
    ones are removed), the others' activations set to zero, for top, bottom and random selections at
    every share at once.

    ``ordering`` defaults to :func:`~jneuron.probing.selection.neuron_ordering` of the probe.
    """
    if probe.task != "classification":
        raise JNeuronError("zero_out: needs a classification probe")
    if mode not in ("keep", "remove"):
        raise JNeuronError(f"mode: expected 'keep' or 'remove', got {mode!r}")
    keep = mode == "keep"
    ordering = ordering if ordering is not None else neuron_ordering(probe)
    shares, counts, masks = selection_masks(ordering, percentages, seed)
    if not keep:
        masks[1:] = 1 - masks[1:]
    device = jprobe.device_activations(x, probe.weight.shape[1])
    y = jnp.asarray(jprobe.encode_labels(labels, probe.classes, device.shape[0]))
    stack = len(masks)
    weight = jnp.broadcast_to(jnp.asarray(probe.weight), (stack, *probe.weight.shape))
    bias = jnp.broadcast_to(jnp.asarray(probe.bias), (stack, *probe.bias.shape))
    counts_ = jprobe.confusion_counts(weight, bias, device, y, jnp.asarray(masks, device.dtype), len(probe.classes))
    return _table(mode, shares, counts, counts_[:, 1].sum(1) / counts_[:, 0].sum(1))


def retrain_ablation(x_train, labels_train, x_test, labels_test, ordering: Ranking,
            percentages: Sequence[float] = (0.1, 0.2, 0.5), *, l1: float = 0.0, l2: float = 0.0,
            epochs: int = 10, batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0,
            squared: bool = False, devices=None, mesh=None) -> AblationTable:
    """Train a fresh probe on all neurons and on the top, bottom and random selections at every share, all in
    one compiled call (same batches for all), and report their test accuracy.

    A masked neuron's weight stays exactly zero, so each probe equals training on its neurons alone.
    ``devices``/``mesh`` shard the training tokens (see :func:`jneuron.train_probe`).
    """
    shares, counts, masks = selection_masks(ordering, percentages, seed)
    device, y, classes, _ = jprobe.training_data(x_train, labels_train, "classification")
    stack = len(masks)
    masks_ = jnp.asarray(masks, device.dtype)
    weights, biases = jprobe.fit_probes(device, y, masks_, np.full(stack, l1), np.full(stack, l2), len(classes),
                                  epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed, squared=squared,
                                  shuffle=True, mesh=resolve_mesh(devices, mesh))
    test = jprobe.device_activations(x_test, device.shape[1])
    y_test = jnp.asarray(jprobe.encode_labels(labels_test, classes, test.shape[0]))
    counts_ = jprobe.confusion_counts(weights, biases, test, y_test, masks_, len(classes))
    return _table("retrain", shares, counts, counts_[:, 1].sum(1) / counts_[:, 0].sum(1))
