"""Cumulative ablation (Amjad et al., 2018): remove neurons in the order of a measure, record accuracy.

For every measure's ranking, in descending and ascending order, and for seeded random orders (the
baseline), neurons are removed cumulatively over the whole network (all hidden layers ranked jointly)
or within one layer at a time, by zero ablation or with bias balancing (each removed neuron's mean
output kept, i.e. ``w_jk * E[t_j]`` folded into the next layer's bias;
:func:`jneuron.flax.ablation.balance_bias` does that fold explicitly on dense layers). It is built on :func:`jneuron.flax.ablation_curve`'s masks: every
step of every order and scope for one mode runs as one ``jax.vmap`` over one compiled program.

>>> import numpy as np, jax, jneuron as jn
>>> from flax import nnx
>>> from jneuron.models import MLP
>>> model = MLP(8, (4, 4), 3, rngs=nnx.Rngs(0), activation=jax.nn.sigmoid)
>>> x = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
>>> y = np.arange(60) % 3
>>> hidden = {f"layers/{i}": np.asarray(h) for i, h in enumerate(model.hidden(x))}
>>> info = jn.neuron_information({"mlp": hidden}, y)
>>> result = jn.cumulative_ablation(model, x, y, info, list(hidden), random=2)
>>> result.curve("mutual_information", "descending", "network", "zero").shape
(9,)
>>> result.curve("random", "random", "layer", "mean").shape
(2, 5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from jneuron.errors import JNeuronError
from jneuron.information import NeuronInformation
from jneuron.results import NeuronIndex, Ranking, Result, to_plain

DIRECTIONS = ("descending", "ascending")
SCOPES = ("network", "layer")
MODES = ("zero", "mean")  # "mean" is bias balancing


@dataclass(frozen=True)
class CumulativeAblation(Result):
    """Accuracy after removing the first ``k`` neurons of every order, per scope and mode.

    Attributes:
      ks: ``{"network": (K,), "layer": (K',)}`` numbers of removed neurons (a layer's k is capped at its width).
      curves: ``{(measure, direction, scope, mode): values}``, ``(K,)`` for the network scope and
        ``(layers, K')`` for the layer scope; measure ``"random"`` (direction ``"random"``) is the mean
        over the seeded random orders, whose single runs are in ``random_runs``.
      baseline: accuracy of the intact model.
      layers, widths: the ablated layers and their widths (flat neuron index = layer offset + unit).
      orders: ``{(measure, direction): flat removal order}``.
      metric: the metric's name.

    The figures are :func:`jneuron.report.figures.cumulative_ablation_figure`.
    """

    ks: Mapping[str, np.ndarray]
    curves: Mapping[tuple, np.ndarray]
    random_runs: Mapping[tuple, np.ndarray]
    baseline: float
    layers: tuple[str, ...]
    widths: tuple[int, ...]
    orders: Mapping[tuple, np.ndarray]
    metric: str

    @property
    def neurons(self) -> NeuronIndex:
        """The identity of every neuron the flat indices of ``orders`` point into (one model, ``"model"``)."""
        return NeuronIndex.from_layers([("model", list(zip(self.layers, self.widths)))])

    def curve(self, measure: str, direction: str, scope: str, mode: str) -> np.ndarray:
        """One curve; raises :class:`JNeuronError` naming what exists if it was not computed."""
        key = (measure, direction, scope, mode)
        if key not in self.curves:
            raise JNeuronError(f"no curve {key}; computed: {sorted(self.curves)}")
        return self.curves[key]

    def area(self, measure: str, direction: str, scope: str, mode: str) -> np.ndarray:
        """Mean metric over the curve's steps (a normalized area under it): per layer for the layer scope."""
        return self.curve(measure, direction, scope, mode).mean(axis=-1)

    def measures(self) -> list[str]:
        """The measures with curves, ``"random"`` last."""
        names = sorted({key[0] for key in self.curves} - {"random"})
        return names + (["random"] if any(key[0] == "random" for key in self.curves) else [])

    def summary(self, mode: str = "zero") -> list[dict]:
        """Per scope (``"network"`` and each layer) and measure: mean metric over the curve (a layer's curve
        up to its width) removing the
        highest-scored first (``descending``), the lowest first (``ascending``), their ``gap``
        (ascending - descending: how well the measure separates the neurons that matter), and the random
        orders' mean; for each curve also ``balancing_gain``, the bias-balanced minus zero-ablation mean
        (when both modes were computed). Sorted by scope, then by gap (best predictor first)."""
        rows = []
        panels = [("network", None)] * ("network" in self.ks) + [("layer", i) for i in range(len(self.layers))] * (
            "layer" in self.ks)
        for scope, index in panels:
            def area(measure, direction, which=mode):
                key = (measure, direction, scope, which)
                if key not in self.curves:
                    return None
                if index is None:
                    return float(self.curves[key].mean())
                return float(self.curves[key][index][self.ks["layer"] <= self.widths[index]].mean())

            random = area("random", "random")
            for measure in self.measures():
                if measure == "random":
                    continue
                down, up = area(measure, "descending"), area(measure, "ascending")
                gains = [area(measure, d, "mean") - area(measure, d, "zero") for d in DIRECTIONS
                         if area(measure, d, "mean") is not None and area(measure, d, "zero") is not None]
                rows.append({"scope": "network" if index is None else self.layers[index], "measure": measure,
                             "descending": down, "ascending": up,
                             "gap": None if down is None or up is None else up - down, "random": random,
                             "balancing_gain": float(np.mean(gains)) if gains else None})
        order = {name: i for i, name in enumerate(["network", *self.layers])}
        return sorted(rows, key=lambda r: (order[r["scope"]], -(r["gap"] if r["gap"] is not None else -np.inf)))

    def to_dict(self) -> dict:
        """Everything, as JSON-ready plain Python."""
        return {
            "metric": self.metric, "baseline": self.baseline, "layers": list(self.layers),
            "widths": list(self.widths), "ks": {k: to_plain(v) for k, v in self.ks.items()},
            "curves": [{"measure": m, "direction": d, "scope": s, "mode": o, "values": to_plain(v)}
                       for (m, d, s, o), v in self.curves.items()],
            "random_runs": [{"scope": s, "mode": o, "values": to_plain(v)} for (s, o), v in self.random_runs.items()],
            "orders": [{"measure": m, "direction": d, "order": to_plain(v)} for (m, d), v in self.orders.items()],
        }


def _rankings(rankings) -> dict[str, Ranking]:
    if isinstance(rankings, NeuronInformation):
        return rankings.rankings()
    if isinstance(rankings, Ranking):
        return {rankings.method: rankings}
    if isinstance(rankings, Mapping) and all(isinstance(r, Ranking) for r in rankings.values()):
        return dict(rankings)
    raise JNeuronError("rankings: expected a NeuronInformation, a Ranking, or a mapping of name to Ranking")


def _steps(limit: int, steps: int) -> np.ndarray:
    return np.unique(np.linspace(0, limit, min(steps, limit) + 1).round().astype(np.int64))


def cumulative_ablation(model, inputs, labels, rankings, layers: Sequence[str], *,
                        directions: Sequence[str] = DIRECTIONS, random: int = 3, seed: int = 0,
                        scopes: Sequence[str] = SCOPES, modes: Sequence[str] = MODES, steps: int = 32,
                        metric="accuracy", reference=None, batch_size: int | None = None) -> CumulativeAblation:
    """Cumulative ablation curves for every ranking, direction, scope and mode.

    Args:
      model: a Flax NNX module (or a Linen model bound by :class:`jneuron.flax.linen.Linen`).
      inputs, labels: the evaluation data (e.g. the test set).
      rankings: a :class:`~jneuron.information.NeuronInformation` (all its measures), a
        :class:`~jneuron.results.Ranking`, or a mapping of name to ranking, over the ``layers``' neurons
        concatenated layer-major.
      layers: the layer paths whose outputs are ablated, in the rankings' column order.
      directions: ``"descending"`` removes the highest-scored first, ``"ascending"`` the lowest first.
      random: number of seeded random orders (their mean is the ``"random"`` curve); 0 for none.
      seed: seed of the random orders.
      scopes: ``"network"`` (all layers ranked jointly) and/or ``"layer"`` (one layer at a time).
      modes: ``"zero"`` and/or ``"mean"`` (bias balancing: removed neurons output their mean on ``reference``).
      steps: at most this many removal steps per curve (evenly spaced, 0 and all included).
      metric: ``"accuracy"``, ``"loss"`` or a jit-able ``f(outputs, labels) -> scalar``.
      reference: inputs the means of bias balancing are taken on (default ``inputs``; Amjad et al. use
        the training data).
      batch_size: masks evaluated at a time, to bound memory (default all at once).
    """
    from jneuron.flax.curves import (  # Flax is imported on first use
        ablation_engine,
        curve_masks,
        metric_function,
    )

    for name, given, allowed in (("directions", directions, DIRECTIONS), ("scopes", scopes, SCOPES),
                                 ("modes", modes, MODES)):
        if not given or any(g not in allowed for g in given):
            raise JNeuronError(f"{name} must be a non-empty subset of {allowed}, got {list(given)}")
    rankings = _rankings(rankings)
    engine = ablation_engine(model)
    layers = engine.check_layers(layers, inputs)
    widths = tuple(engine.widths(inputs, layers))
    total = sum(widths)
    for name, ranking in rankings.items():
        if len(ranking.scores) != total:
            raise JNeuronError(f"ranking '{name}' scores {len(ranking.scores)} neurons; the layers {list(layers)} "
                               f"have {total} (widths {list(widths)})")
    orders = {}
    for name, ranking in rankings.items():
        for direction in directions:
            orders[(name, direction)] = ranking.order if direction == "descending" else ranking.order[::-1].copy()
    generator = np.random.default_rng(seed)
    for run in range(random):
        orders[("random", f"random{run}")] = generator.permutation(total)
    ks = {"network": _steps(total, steps), "layer": _steps(max(widths), steps)}
    blocks, masks = [], []
    for key, order in orders.items():
        for scope in scopes:
            rows = curve_masks(order, ks[scope], widths, scope)
            blocks.append((key, scope, len(rows)))
            masks.append(rows)
    masks.append(np.ones((1, total), np.float32))
    masks = np.concatenate(masks)
    per_layer = dict(zip(layers, np.split(masks, np.cumsum(widths)[:-1], axis=1)))
    score = metric_function(metric)
    curves, random_runs, baseline = {}, {}, None
    for mode in modes:
        values = None
        if mode == "mean":
            means = engine.means(inputs if reference is None else reference, layers)
            values = {layer: np.asarray(means[layer]) for layer in layers}
        results = np.asarray(engine.evaluate(per_layer, values, score, inputs, labels, batch_size), np.float64)
        baseline = float(results[-1])
        start = 0
        for (measure, direction), scope, count in blocks:
            block = results[start:start + count]
            start += count
            block = block if scope == "network" else block.reshape(len(layers), len(ks[scope]))
            if measure == "random":
                random_runs.setdefault((scope, mode), []).append(block)
            else:
                curves[(measure, direction, scope, mode)] = block
        for scope in scopes:
            if random:
                runs = np.stack(random_runs[(scope, mode)])
                random_runs[(scope, mode)] = runs
                curves[("random", "random", scope, mode)] = runs.mean(axis=0)
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
    return CumulativeAblation({s: ks[s] for s in scopes}, curves, random_runs, baseline, tuple(layers), widths,
                              orders, name)
