"""Linear probes (Dalvi et al., AAAI 2019; NeuroX): elastic-net logistic or linear regression on activations,
trained entirely inside one compiled program, and a whole penalty grid trained in one vmapped call.

>>> import numpy as np, jneuron as jn
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(600, 8)).astype(np.float32); labels = np.where(x[:, 3] > 0, "noun", "verb")
>>> probe = jn.train_probe(x, labels, l1=1e-4, l2=1e-4, epochs=5)
>>> probe.classes.tolist(), probe.evaluate(x, labels)["accuracy"] > 0.9
(['noun', 'verb'], True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jneuron import config
from jneuron.data.checks import as_2d, check_finite
from jneuron.data.labels import label_values
from jneuron.errors import JNeuronError
from jneuron.kernels import probe as kp
from jneuron.kernels import quantize as kquant
from jneuron.kernels import sharded as ksharded
from jneuron.kernels.sharded import TOKENS
from jneuron.precision import working_dtype
from jneuron.probing import selection as probe_rankings
from jneuron.results import NeuronIndex, Result, to_plain
from jneuron.streaming.constant import constant_neurons, warn_constant
from jneuron.streaming.mesh import resolve_mesh

_train = jax.jit(kp.train, static_argnames=("classes", "learning_rate", "squared", "regression"))
_train_sharded = jax.jit(kp.train_sharded,
                         static_argnames=("mesh", "classes", "learning_rate", "squared", "regression"))
_confusion = jax.jit(kp.confusion, static_argnames=("classes",))
_all_finite = jax.jit(lambda x: jnp.isfinite(x).all())  # one fused pass: no (tokens, neurons) mask in memory


def confusion_counts(weight, bias, x: jax.Array, y: jax.Array, masks: jax.Array | None, classes: int) -> np.ndarray:
    """Counts ``(settings, 3, classes)`` (gold, correct, predicted) for a stack of probes, in token chunks of
    :data:`jneuron.config.PROBE_EVALUATION_TOKENS` (``masks=None``: every neuron)."""
    total = 0
    step = config.PROBE_EVALUATION_TOKENS
    for start in range(0, x.shape[0], step):
        part = slice(start, start + step)
        total = total + np.asarray(_confusion((weight, bias), x[part], y[part], masks, classes=classes), np.int64)
    return total


@dataclass(frozen=True)
class Probe(Result):
    """A trained linear probe.

    Attributes:
      weight: ``(classes, neurons)`` (one row for a regression probe), the NeuroX / torch layout.
      bias: ``(classes,)``.
      classes: the label values in sorted order; row ``i`` of ``weight`` is ``classes[i]`` (empty for regression).
      task: ``"classification"`` or ``"regression"``.
      neurons: identity of every input column.
      settings: the training settings (penalties, epochs, batch size, learning rate, seed).
      dead: constant neurons of the training data (:mod:`jneuron.streaming.constant`): weight 0, ranked last.
    """

    weight: np.ndarray
    bias: np.ndarray
    classes: np.ndarray
    task: str
    neurons: NeuronIndex
    settings: dict = field(default_factory=dict)
    dead: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def outputs(self, x) -> np.ndarray:
        """Logits ``(tokens, classes)`` (or regression outputs ``(tokens, 1)``)."""
        x = device_activations(x, self.weight.shape[1])
        return np.asarray(kp.outputs(self._params(), x, None))[:, 0]

    def predict(self, x) -> np.ndarray:
        """Predicted label values (classification) or real outputs (regression), one per token."""
        out = self.outputs(x)
        return out[:, 0] if self.task == "regression" else self.classes[np.argmax(out, axis=1)]

    def evaluate(self, x, labels=None, *, chunk_tokens: int | None = None, valid=None, devices=None, mesh=None,
                 checkpoint=None, progress: bool = False, on_chunk=None) -> dict:
        """Accuracy, macro F1 and per-class accuracy (classification) or MSE and R^2 (regression).

        The probe is evaluated in one streamed pass: a classification probe's integer counts
        (:func:`jneuron.probing.evaluation.evaluation_counts`) are the same for any chunking, sharding or
        resumption; a regression probe's squared errors (:func:`jneuron.probing.evaluation.squared_errors`)
        agree to rounding.

        Args:
          x: activations ``(tokens, neurons)``; a source (``jn.open_activations``, ``jn.as_source``) with
            ``labels``; or (``labels=None``) ``(activations, labels)`` chunks (``activations`` may be
            ``Rows(x, valid)``), a list or a callable returning them (re-iterable) or an iterator.
          labels: one label per row (strings or integers; real targets for a regression probe).
          chunk_tokens: rows per chunk of the pass.
          valid: boolean ``(tokens,)`` mask of the rows that count (arrays and sources); the labels of
            other rows are never read.
          devices, mesh: shard the rows over these devices or this mesh (see :mod:`jneuron.streaming.mesh`).
          checkpoint: a folder; the running counts are saved there, and a rerun resumes from them.
          progress: draw a progress line on stderr. on_chunk: called with the rows of each chunk read.
        """
        if self.task == "classification":
            from jneuron.probing.evaluation import evaluation_counts

            counts = evaluation_counts(self, x, labels, chunk_tokens=chunk_tokens, valid=valid, devices=devices,
                                       mesh=mesh, checkpoint=checkpoint, progress=progress, on_chunk=on_chunk)
            return metrics(counts, self.classes)
        from jneuron.probing.evaluation import squared_errors

        tokens, sse, sst = squared_errors(self, x, labels, chunk_tokens=chunk_tokens, valid=valid, devices=devices,
                                          mesh=mesh, checkpoint=checkpoint, progress=progress, on_chunk=on_chunk)
        return {"tokens": tokens, "mse": sse / tokens, "r2": 1.0 - sse / sst if sst > 0 else float("nan")}

    def _params(self):
        return jnp.asarray(self.weight)[None], jnp.asarray(self.bias)[None]

    def to_dict(self) -> dict:
        """Settings, classes, weights and the neurons (the weights' columns) as JSON-ready plain Python."""
        return {"task": self.task, "classes": to_plain(self.classes), "settings": to_plain(self.settings),
                "weight": to_plain(self.weight), "bias": to_plain(self.bias), "neurons": self.neurons.records(),
                "dead": [self.neurons.record(int(i)) for i in self.dead]}


def metrics(counts: np.ndarray, classes: np.ndarray) -> dict:
    """Accuracy, macro F1 (over classes seen in gold or predictions) and per-class accuracy from
    ``(3, classes)`` counts: gold tokens, correct, predicted."""
    gold, hit, said = (np.asarray(c, np.int64) for c in counts)
    tokens = int(gold.sum())
    seen = (gold + said) > 0
    f1 = np.where(seen, 2 * hit / np.maximum(gold + said, 1), 0.0)
    per_class = {to_plain(c): (float(h / g) if g else None) for c, h, g in zip(classes, hit, gold)}
    return {"tokens": tokens, "accuracy": float(hit.sum() / max(tokens, 1)),
            "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0, "per_class": per_class}


def class_index(labels) -> np.ndarray:
    """The sorted distinct label values (strings or numbers): the probe's deterministic label-to-row map."""
    values = label_values(labels)
    if values.dtype.kind not in "iubU" and not (values.dtype.kind == "f" and np.all(values == np.round(values))):
        raise JNeuronError(f"labels: expected strings or integers, got dtype {values.dtype}")
    return np.unique(values)


def encode_labels(labels, classes: np.ndarray, tokens: int) -> np.ndarray:
    """Row index of every label in ``classes``; unknown labels are an error naming the first one and where."""
    values = label_values(labels, tokens=tokens)
    try:
        index = np.clip(np.searchsorted(classes, values), 0, len(classes) - 1)
        known = classes[index] == values
    except (TypeError, np.exceptions.DTypePromotionError):
        raise JNeuronError(f"labels of dtype {values.dtype} do not match the probe's classes {classes.dtype}") from None
    if not known.all():
        first = int(np.flatnonzero(~known)[0])
        raise JNeuronError(f"labels: row {first + 1} (counted from 1) has label {values[first].item()!r}, not one of the probe's classes")
    return index.astype(np.int32)


def _real_labels(labels, tokens: int) -> np.ndarray:
    values = np.asarray(labels)
    if values.ndim != 1 or len(values) != tokens:
        raise JNeuronError(f"targets: expected {tokens} values (one per activation row), got shape {values.shape}")
    if values.dtype.kind not in "fiub":
        raise JNeuronError(f"targets: a regression probe needs real numbers, got dtype {values.dtype}")
    if not np.all(np.isfinite(values)):
        raise JNeuronError(f"targets: row {int(np.flatnonzero(~np.isfinite(values))[0]) + 1} (counted from 1) is NaN or infinite")
    return values.astype(np.float32)


def device_activations(x, neurons: int | None = None) -> jax.Array:
    """Checked activations on the device: 2-D, non-empty, finite (first bad row and neuron named)."""
    x = as_2d(x, "activations")
    if x.shape[0] == 0:
        raise JNeuronError(f"activations: no tokens (shape {tuple(x.shape)})")
    if neurons is not None and x.shape[1] != neurons:
        raise JNeuronError(f"activations: the probe has {neurons} neurons, the input has {x.shape[1]} columns")
    device = jnp.asarray(x, working_dtype(x.dtype))
    if not bool(_all_finite(device)):
        check_finite(np.asarray(device), "activations")
    return device


def training_data(x, labels, task: str):
    """Device activations (constant neurons' columns zeroed), device targets, the sorted classes (empty for
    regression) and the constant neurons."""
    if task not in ("classification", "regression"):
        raise JNeuronError(f"task: expected 'classification' or 'regression', got {task!r}")
    device, dead = _without_constant(device_activations(x))
    if task == "regression":
        return device, jnp.asarray(_real_labels(labels, device.shape[0]), device.dtype), np.zeros(0), dead
    classes = class_index(labels)
    if len(classes) < 2:
        raise JNeuronError(f"labels: a classification probe needs at least 2 classes, got {classes.tolist()}")
    return device, jnp.asarray(encode_labels(labels, classes, device.shape[0])), classes, dead


def _without_constant(device: jax.Array) -> tuple[jax.Array, np.ndarray]:
    """The activations with their constant neurons' columns set to 0, and those neurons: a constant input
    would act as a second bias (at an offset of 1e4, a large one) and take weight from the penalties'
    trade-off; a zero column gets no gradient, so its weight stays at its starting 0."""
    low, high = kquant.minmax(device, device.shape[0])
    dead = np.flatnonzero(constant_neurons(low, high, device.dtype))
    if len(dead):
        device = device.at[:, dead].set(0)
    return device, dead


def batch_rows(tokens: int, epochs: int, batch_size: int, seed: int = 0, shuffle: bool = True):
    """Token indices of every minibatch of every epoch ``(epochs * batches, batch_size)`` and their validity
    (the last batch of an epoch is padded): a fresh seeded permutation per epoch, or the fixed token order."""
    if epochs < 1 or batch_size < 1:
        raise JNeuronError(f"need epochs >= 1 and batch_size >= 1, got {epochs} and {batch_size}")
    batches = -(-tokens // batch_size)
    rows = np.zeros((epochs, batches * batch_size), np.int32)
    generator = np.random.default_rng(seed)
    for epoch in range(epochs):
        rows[epoch, :tokens] = generator.permutation(tokens) if shuffle else np.arange(tokens)
    valid = np.zeros((epochs, batches * batch_size), bool)
    valid[:, :tokens] = True
    shape = (epochs * batches, batch_size)
    return jnp.asarray(rows.reshape(shape)), jnp.asarray(valid.reshape(shape))


def fit_probes(x, y, masks, l1s, l2s, classes: int, *, epochs: int, batch_size: int, learning_rate: float,
               seed: int, squared: bool, shuffle: bool, regression: bool = False, mesh: Mesh | None = None):
    """Train a stack of probes (one per mask / penalty row) on the same seeded batches in one compiled call."""
    if not learning_rate > 0:
        raise JNeuronError(f"learning_rate: expected a positive learning rate, got {learning_rate}")
    rows, valid = batch_rows(x.shape[0], epochs, batch_size, seed, shuffle)
    static = {"classes": 1 if regression else int(classes), "learning_rate": float(learning_rate), "squared": bool(squared),
              "regression": regression}
    l1s, l2s = jnp.asarray(l1s, x.dtype), jnp.asarray(l2s, x.dtype)
    if mesh is None:
        return _train(x, y, masks, l1s, l2s, rows, valid, **static)
    shards = ksharded.axis_size(mesh, TOKENS)
    per_shard = -(-x.shape[0] // shards)
    local_rows, local_valid, counts = shard_batches(np.asarray(rows), np.asarray(valid), per_shard, shards)
    by_rows = NamedSharding(mesh, P(TOKENS))
    padding = shards * per_shard - x.shape[0]
    x = jax.device_put(jnp.pad(x, ((0, padding), (0, 0))), by_rows)
    y = jax.device_put(jnp.pad(y, (0, padding)), by_rows)
    batches = NamedSharding(mesh, P(None, TOKENS))
    return _train_sharded(x, y, masks, l1s, l2s, jax.device_put(local_rows, batches),
                          jax.device_put(local_valid, batches), jnp.asarray(counts), mesh=mesh, **static)


def shard_batches(rows: np.ndarray, valid: np.ndarray, per_shard: int, shards: int):
    """Split every batch's token indices by the token shard that holds them (shard ``k``: rows
    ``[k * per_shard, (k + 1) * per_shard)``).

    Returns ``(local_rows, local_valid, counts)``: ``(steps, shards, cap)`` indices within each shard and
    their validity (``cap`` is the most any shard gets in any batch), and each batch's real rows.

    >>> local, ok, counts = shard_batches(np.array([[0, 5, 3, 1]]), np.array([[True, True, True, False]]), 3, 2)
    >>> local[0].tolist(), ok[0].tolist(), counts.tolist()  # shard 0 holds row 0, shard 1 rows 5 and 3
    ([[0, 0], [2, 0]], [[True, False], [True, True]], [3])
    """
    steps, batch = rows.shape
    owner = np.where(valid, rows // per_shard, shards)  # padding rows go to a shard past the end
    order = np.argsort(owner, axis=1, kind="stable")
    owner_sorted = np.take_along_axis(owner, order, 1)
    rows_sorted = np.take_along_axis(rows, order, 1)
    per_owner = np.zeros((steps, shards + 1), np.int64)
    np.add.at(per_owner, (np.repeat(np.arange(steps), batch), owner_sorted.ravel()), 1)
    first = np.cumsum(per_owner, axis=1) - per_owner  # position of each owner's first row in the sorted batch
    rank = np.arange(batch)[None, :] - np.take_along_axis(first, owner_sorted, 1)
    cap = max(1, int(per_owner[:, :shards].max()))
    local_rows = np.zeros((steps, shards, cap), np.int32)
    local_valid = np.zeros((steps, shards, cap), bool)
    real = owner_sorted < shards
    step = np.broadcast_to(np.arange(steps)[:, None], owner_sorted.shape)
    where = (step[real], owner_sorted[real], rank[real])
    local_rows[where] = rows_sorted[real] - owner_sorted[real] * per_shard
    local_valid[where] = True
    return local_rows, local_valid, valid.sum(axis=1).astype(np.int32)


def _penalties(values, name: str) -> np.ndarray:
    array = np.atleast_1d(np.asarray(values, np.float64))
    if array.ndim != 1 or len(array) == 0 or not np.all(np.isfinite(array)) or np.any(array < 0):
        raise JNeuronError(f"{name}: expected non-negative finite penalties, got {values!r}")
    return array


def train_probe(x, labels, *, l1: float = 0.0, l2: float = 0.0, epochs: int = 10, batch_size: int = 32,
                learning_rate: float = 1e-3, seed: int = 0, squared: bool = False, task: str = "classification",
                shuffle: bool = True, names: Sequence[str] | NeuronIndex | None = None, devices=None,
                mesh=None) -> Probe:
    """Train one probe: cross-entropy (or squared error) + ``l1 * sum|W| + l2 * ||W||_F`` with Adam.

    Args:
      x: activations ``(tokens, neurons)``.
      labels: one label per token: strings or integers (any values; mapped to rows in sorted order),
        or real targets when ``task="regression"``.
      l1, l2: penalty weights (NeuroX's form, not scaled by the batch); ``squared`` uses ``||W||_F^2``.
      epochs, batch_size, learning_rate: Adam training; every token is seen once per epoch (the last batch is smaller).
      seed: shuffles the minibatches (``shuffle=False`` keeps NeuroX's fixed token order).
      names: who the columns are: a model name (a one-item sequence) or a NeuronIndex naming every
        column (model, layer, unit); default one model ``"model"``.
      devices, mesh: shard the tokens over devices (see :mod:`jneuron.streaming.mesh`): every device takes the
        gradient of its own rows of each batch, combined by ``psum``; the batches are the same as on one
        device, so the result equals it to float32 rounding.

    Returns:
      A :class:`Probe`. Weights start at zero, so training is deterministic for a seed.

    >>> import numpy as np
    >>> x = np.random.default_rng(1).normal(size=(300, 4)).astype(np.float32)
    >>> train_probe(x, x[:, 0] * 2.0, task="regression", epochs=20, learning_rate=1e-2).weight.argmax()
    np.int64(0)
    """
    l1v, l2v = float(_penalties(l1, "l1")[0]), float(_penalties(l2, "l2")[0])
    device, y, classes, dead = training_data(x, labels, task)
    weight, bias = fit_probes(device, y, None, [l1v], [l2v], len(classes),
                        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed, squared=squared, shuffle=shuffle,
                        regression=task == "regression", mesh=resolve_mesh(devices, mesh))
    probe = _probe(weight[0], bias[0], classes, task, device.shape[1], names, dead, l1=l1v, l2=l2v,
                   squared=squared, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                   shuffle=shuffle)
    warn_constant("train_probe", [probe.neurons.label(int(i)) for i in dead], "get weight 0", 2)
    return probe


def _probe(weight, bias, classes, task, width, names, dead, **settings) -> Probe:
    if isinstance(names, NeuronIndex):
        neurons = names
    else:
        model = tuple(names) if names is not None else ("model",)
        if len(model) != 1:
            raise JNeuronError(f"names: a probe reads one model's columns, got {len(model)} names")
        neurons = NeuronIndex.from_widths(model, (width,))
    if len(neurons) != width:
        raise JNeuronError(f"names: the index names {len(neurons)} neurons, the activations have {width}")
    return Probe(np.asarray(weight), np.asarray(bias), classes, task, neurons, settings, dead)


@dataclass(frozen=True)
class ProbeGrid(Result):
    """Probes for every ``(l1, l2)`` pair and the setting chosen on held-out data.

    Attributes:
      l1, l2: the grid axes. ``accuracy[i, j]``: held-out accuracy of ``probes[i][j]`` (l1[i], l2[j]).
      neurons_needed[i, j]: size of the union of the per-class top sets at ``mass`` of the weight mass
        (fewer = sparser).
      best: ``(i, j)``, the sparsest setting whose accuracy is within ``tolerance`` of the best accuracy
        (ties: higher accuracy, then the lower grid position).
    """

    l1: np.ndarray
    l2: np.ndarray
    accuracy: np.ndarray
    neurons_needed: np.ndarray
    probes: list[list[Probe]]
    best: tuple[int, int]
    tolerance: float
    mass: float

    @property
    def probe(self) -> Probe:
        """The chosen probe."""
        return self.probes[self.best[0]][self.best[1]]

    def to_dict(self) -> dict:
        """The grid tables and the choice as JSON-ready plain Python."""
        i, j = self.best
        return {"l1": to_plain(self.l1), "l2": to_plain(self.l2), "accuracy": to_plain(self.accuracy),
                "neurons_needed": to_plain(self.neurons_needed), "tolerance": self.tolerance, "mass": self.mass,
                "best": {"l1": float(self.l1[i]), "l2": float(self.l2[j]), "accuracy": float(self.accuracy[i, j]),
                         "neurons_needed": int(self.neurons_needed[i, j])}}


def train_probes(x, labels, *, l1: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3),
                 l2: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3), validation=0.1, tolerance: float = 0.01,
                 mass: float = 0.9, epochs: int = 10, batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0,
                 squared: bool = False, shuffle: bool = True, names: Sequence[str] | NeuronIndex | None = None,
                 devices=None,
                 mesh=None) -> ProbeGrid:
    """Train a classification probe for every ``(l1, l2)`` pair in one compiled call and choose one.

    All settings see the same minibatches and share every matrix product (the settings are a batch axis
    of the weights), and each probe equals :func:`train_probe` with that setting on the training part.
    The choice makes the paper's trade-off explicit: among settings whose held-out accuracy is within
    ``tolerance`` of the best, the one needing the fewest neurons to carry ``mass`` of every class's weight.

    Args:
      validation: a fraction of the tokens held out (seeded by ``seed``), or ``(x_val, labels_val)``.
      devices, mesh: shard the training tokens over devices (see :func:`train_probe`).

    >>> import numpy as np
    >>> x = np.random.default_rng(2).normal(size=(500, 6)).astype(np.float32)
    >>> grid = train_probes(x, (x[:, 2] > 0).astype(int), l1=[0, 1e-3], l2=[0, 1e-3], epochs=3)
    >>> grid.accuracy.shape, grid.probe.classes.tolist()
    ((2, 2), [0, 1])
    """
    l1s, l2s = _penalties(l1, "l1"), _penalties(l2, "l2")
    if isinstance(validation, tuple):
        x_train, y_train, (x_val, y_val) = x, labels, validation
    else:
        if not 0 < float(validation) < 1:
            raise JNeuronError(f"validation: expected a fraction in (0, 1) or (x_val, labels_val), got {validation}")
        tokens = as_2d(x, "activations").shape[0]
        held = np.zeros(tokens, bool)
        held[np.random.default_rng(seed).permutation(tokens)[: max(1, int(round(validation * tokens)))]] = True
        values = np.asarray(labels)
        x_train, y_train, x_val, y_val = np.asarray(x)[~held], values[~held], np.asarray(x)[held], values[held]
    device, y, classes, dead = training_data(x_train, y_train, "classification")
    grid_l1 = np.repeat(l1s, len(l2s))
    grid_l2 = np.tile(l2s, len(l1s))
    weights, biases = fit_probes(device, y, None, grid_l1, grid_l2, len(classes), epochs=epochs, batch_size=batch_size,
                           learning_rate=learning_rate, seed=seed, squared=squared, shuffle=shuffle, mesh=resolve_mesh(devices, mesh))
    val = device_activations(x_val, device.shape[1])
    y_v = jnp.asarray(encode_labels(y_val, classes, val.shape[0]))
    counts = confusion_counts(weights, biases, val, y_v, None, len(classes))
    accuracy = (counts[:, 1].sum(1) / counts[:, 0].sum(1)).reshape(len(l1s), len(l2s))
    weights, biases = np.asarray(weights), np.asarray(biases)
    needed = np.array([len(probe_rankings.top_neurons(w, mass).union) for w in weights]).reshape(accuracy.shape)
    close = accuracy >= accuracy.max() - tolerance
    flat = np.lexsort((np.arange(accuracy.size), -accuracy.ravel(), np.where(close, needed, np.inf).ravel()))[0]
    probes = [[_probe(weights[i * len(l2s) + j], biases[i * len(l2s) + j], classes, "classification",
                      device.shape[1], names, dead, l1=float(a), l2=float(b), squared=squared, epochs=epochs,
                      batch_size=batch_size, learning_rate=learning_rate, seed=seed, shuffle=shuffle)
               for j, b in enumerate(l2s)] for i, a in enumerate(l1s)]
    best = (int(flat // len(l2s)), int(flat % len(l2s)))
    warn_constant("train_probes", [probes[0][0].neurons.label(int(i)) for i in dead], "get weight 0", 2)
    return ProbeGrid(l1s, l2s, accuracy, needed, probes, best, float(tolerance), float(mass))
