"""The information study (Amjad et al., 2018) on the bundled digits, end to end.

Trains a feed-forward network with 2 sigmoid hidden layers (Adam, learning rate 1e-3, batch 32,
cross-entropy + L2), measures every hidden neuron on the training data (1-bit quantization at 0.5:
entropy, mutual information with the label, KL selectivity, class selectivity), then ablates the
neurons cumulatively on the test data in the order of every measure (highest first, lowest first, and
seeded random orders), over the whole network and layer by layer, with zero ablation and with bias
balancing. Writes the curves (JSON and PNG) and a summary computed from them (Markdown and JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from jneuron.cli.options import add_out_argument
from jneuron.data.atomic import atomic_write_text

if TYPE_CHECKING:
    from jneuron.flax.cumulative_ablation import CumulativeAblation

NAME = "study-information"
HELP = "train a 2-sigmoid-layer network on the bundled digits, measure and cumulatively ablate its neurons"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hidden", type=int, nargs=2, default=(64, 32), metavar=("W1", "W2"),
                        help="widths of the two hidden layers (default 64 32)")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    parser.add_argument("--l2", type=float, default=1e-4, help="L2 penalty on all weights (default 1e-4)")
    parser.add_argument("--random", type=int, default=5, help="seeded random orders (default 5)")
    parser.add_argument("--steps", type=int, default=32, help="removal steps per curve (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the model and the random orders")
    add_out_argument(parser, "study-information-output")


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jneuron.data.bundled import load_digits
    from jneuron.flax.cumulative_ablation import cumulative_ablation
    from jneuron.information import neuron_information
    from jneuron.models import MLP, accuracy, train_classifier
    from jneuron.report.figures import cumulative_ablation_figure

    start = time.perf_counter()
    train, test = load_digits().split(seed=args.seed)
    model = MLP(64, tuple(args.hidden), 10, rngs=nnx.Rngs(args.seed), activation=jax.nn.sigmoid)
    model = train_classifier(model, train.images, train.labels, epochs=args.epochs, batch_size=32,
                             learning_rate=1e-3, weight_decay=args.l2, seed=args.seed)
    layers = [f"layers/{i}" for i in range(2)]
    hidden = dict(zip(layers, (jax.device_get(h) for h in model.hidden(jnp.asarray(train.images)))))
    info = neuron_information({"mlp": hidden}, train.labels, threshold=0.5)
    result = cumulative_ablation(model, test.images, test.labels, info, layers, random=args.random, seed=args.seed,
                                 steps=args.steps, reference=train.images)
    out = args.out
    written = [info.to_json(out / "information.json"), result.to_json(out / "curves.json")]
    for scope in ("network", "layer"):
        for mode in ("zero", "mean"):
            cumulative_ablation_figure(result, scope, mode, out / f"{scope}_{mode}.png")
            written.append(out / f"{scope}_{mode}.png")
    summary = {"zero": result.summary("zero"), "mean": result.summary("mean")}
    facts = {"train_accuracy": accuracy(model, train.images, train.labels), "test_accuracy": result.baseline,
             "hidden": list(args.hidden), "epochs": args.epochs, "l2": args.l2, "seed": args.seed,
             "label_entropy_bits": info.label_entropy, "one_bin": len(info.one_bin)}
    written.append(atomic_write_text(out / "summary.json", json.dumps({**facts, "summary": summary}, indent=1)))
    written.append(atomic_write_text(out / "summary.md", render_summary(result, facts)))
    print(f"test accuracy {result.baseline:.3f}; {len(info.neurons)} hidden neurons measured and ablated")
    print(render_summary(result, facts).split("## Curves")[0].strip())
    for path in written:
        print(f"wrote {path}")
    print(f"finished in {time.perf_counter() - start:.1f} s")
    return 0


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_summary(result: CumulativeAblation, facts: dict) -> str:
    """The written summary, every statement computed from the curves."""
    zero, mean = result.summary("zero"), result.summary("mean")
    lines = [
        "# Information study: which neurons matter (generated)",
        "",
        f"Network: 64 -> {facts['hidden'][0]} -> {facts['hidden'][1]} sigmoid -> 10 on the bundled digits, "
        f"{facts['epochs']} epochs, L2 {facts['l2']:g}, seed {facts['seed']}. Train accuracy "
        f"{facts['train_accuracy']:.3f}, test accuracy {facts['test_accuracy']:.3f}. Measures on the training "
        f"data (1 bit at 0.5, H(Y) = {facts['label_entropy_bits']:.3f} bits, {facts['one_bin']} neurons in one bin); "
        "ablation on the test data. A curve's score is its mean test accuracy over the removal steps; "
        "the gap is (lowest-first) - (highest-first): the larger, the better the measure tells the neurons "
        "that matter from those that do not.",
        "",
        "## Which measure predicts the accuracy drop, where",
        "",
    ]
    for scope in ["network", *result.layers]:
        rows = [r for r in zero if r["scope"] == scope]
        if not rows:
            continue
        best, worst = rows[0], rows[-1]
        where = "over the whole network" if scope == "network" else f"in {scope} (layer by layer)"
        beats = "falls faster than" if best["descending"] < best["random"] else "does not fall faster than"
        lines.append(
            f"- {where}: **{best['measure']}** predicts best (gap {best['gap']:.3f}); removing its highest-scored "
            f"neurons first {beats} random removal (mean accuracy {best['descending']:.3f} vs {best['random']:.3f}); "
            f"**{worst['measure']}** predicts worst (gap {worst['gap']:.3f}).")
    gains = {scope: [r["balancing_gain"] for r in mean if r["scope"] == scope and r["balancing_gain"] is not None]
             for scope in ["network", *result.layers]}
    lines += ["", "## How much bias balancing helps", ""]
    for scope, values in gains.items():
        if not values:
            continue
        random_gain = _random_gain(result, scope)
        average = sum(values) / len(values)
        verdict = "helps" if average > 0.005 else "hurts" if average < -0.005 else "makes little difference"
        random_text = "-" if random_gain is None else f"{random_gain:+.3f}"
        lines.append(f"- {scope}: bias balancing {verdict}: it changes a curve's mean accuracy by {average:+.3f} on "
                     f"average over measures and directions (range {min(values):+.3f} to {max(values):+.3f}; "
                     f"random orders {random_text}).")
    lines += ["", "## Curves (mean test accuracy over the removal steps)", "",
              "| scope | measure | highest first | lowest first | gap | random | highest first, balanced |"
              " lowest first, balanced |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    balanced = {(r["scope"], r["measure"]): r for r in mean}
    for r in zero:
        b = balanced.get((r["scope"], r["measure"]), {})
        lines.append(f"| {r['scope']} | {r['measure']} | {_fmt(r['descending'])} | {_fmt(r['ascending'])} | "
                     f"{_fmt(r['gap'])} | {_fmt(r['random'])} | {_fmt(b.get('descending'))} | "
                     f"{_fmt(b.get('ascending'))} |")
    lines += ["", "Plots: `network_zero.png`, `network_mean.png`, `layer_zero.png`, `layer_mean.png`; "
              "numbers: `curves.json`, `summary.json`, `information.json`.", ""]
    return "\n".join(lines)


def _random_gain(result: CumulativeAblation, scope: str):
    panel = "network" if scope == "network" else "layer"
    keys = [("random", "random", panel, mode) for mode in ("mean", "zero")]
    if not all(k in result.curves for k in keys):
        return None
    balanced, zeroed = (result.curves[k] for k in keys)
    if panel == "layer":
        index = result.layers.index(scope)
        shown = result.ks["layer"] <= result.widths[index]
        balanced, zeroed = balanced[index][shown], zeroed[index][shown]
    return float(balanced.mean() - zeroed.mean())
