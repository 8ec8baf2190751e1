"""The work of ``jneuron study-crosslm`` (:mod:`jneuron.cli.studies.crosslm`): train, rank, erase, control."""


from __future__ import annotations

import argparse
import functools
import io
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jneuron as jn
from jneuron.cli.studies.crosslm import FRACTIONS, RANKINGS, SENTENCE_FINAL, SIZES
from jneuron.data.atomic import atomic_write_bytes, atomic_write_json
from jneuron.data.english import PUNCTUATION, EnglishCorpus, load_english
from jneuron.errors import JNeuronError
from jneuron.models.onlstm import bracket_f1, build_tree, tree_spans
from jneuron.models.word_lm import train_word_lms


def _size(args: argparse.Namespace) -> dict:
    size = dict(SIZES["full" if args.full else "default"])
    size.update({k: getattr(args, k) for k in size if getattr(args, k) is not None})
    if size["models"] < 3:
        raise JNeuronError(f"--models must be at least 3 (Bau et al. compare each model with several), "
                           f"got {size['models']}")
    for name in ("hidden", "embed", "window", "epochs", "batch"):
        if size[name] < 1:
            raise JNeuronError(f"--{name} must be at least 1, got {size[name]}")
    if size["vocab"] < 10:
        raise JNeuronError(f"--vocab must be at least 10, got {size['vocab']}")
    if args.onlstm and size["hidden"] % args.chunk_size:
        raise JNeuronError(f"--hidden ({size['hidden']}) must be a multiple of --chunk-size ({args.chunk_size})")
    if args.random < 1 or args.control < 0 or args.control > size["hidden"]:
        raise JNeuronError("--random must be at least 1 and --control between 0 and --hidden")
    return size


# ---------------------------------------------------------------- compiled evaluations


@functools.partial(jax.jit, static_argnums=0)
def _hidden(graphdef, state, tokens):
    return nnx.merge(graphdef, state).hidden_states(tokens)


@functools.partial(jax.jit, static_argnums=0)
def _perplexities(graphdef, state, hidden, targets, matrices, offsets):
    """Held-out perplexity under each readout transform ``(matrices[i], offsets[i])``."""
    model = nnx.merge(graphdef, state)

    def one(transform):
        return optax.softmax_cross_entropy_with_integer_labels(model.readout(hidden, transform), targets).mean()

    return jnp.exp(jax.lax.map(one, (matrices, offsets)))


@functools.partial(jax.jit, static_argnums=0)
def _control_effects(graphdef, state, hidden, targets, matrices, offsets):
    """Per transform: mean KL(intact || controlled), the change of each word's mean probability, perplexity."""
    model = nnx.merge(graphdef, state)
    intact = jax.nn.log_softmax(model.readout(hidden))

    def one(transform):
        controlled = jax.nn.log_softmax(model.readout(hidden, transform))
        kl = jnp.sum(jnp.exp(intact) * (intact - controlled), axis=-1).mean()
        shift = jnp.exp(controlled).mean(axis=0) - jnp.exp(intact).mean(axis=0)
        loss = -jnp.take_along_axis(controlled, targets[:, None], axis=-1).mean()
        return kl, shift, jnp.exp(loss)

    return jax.lax.map(one, (matrices, offsets))


def _zeroing(hidden: int, erased) -> tuple[np.ndarray, np.ndarray]:
    """The readout transform that zeroes the ``erased`` units."""
    keep = np.ones(hidden, np.float32)
    keep[np.asarray(erased, np.int64)] = 0
    return np.diag(keep), np.zeros(hidden, np.float32)


def _direction_erasure(d: jn.DirectionRanking, chosen) -> tuple[np.ndarray, np.ndarray]:
    """The readout transform erasing the ``chosen`` SVCCA directions around the mean (their ``h_i`` set to 0)."""
    chosen = np.asarray(chosen, np.int64)
    if len(chosen) and np.array_equal(chosen, np.arange(len(chosen))):
        matrix = d.erasure(len(chosen))  # the top directions: the ranking's own erasure matrix
    else:
        matrix = np.eye(len(d.mean)) - d.weights[:, chosen] @ d.patterns[:, chosen].T
    return matrix.astype(np.float32), (d.mean - d.mean @ matrix).astype(np.float32)


# ---------------------------------------------------------------- rankings and erasure


def _unit_orders(ranking: jn.Ranking, models: int) -> list[np.ndarray]:
    """Each model's units, best first, by a cross-model ranking."""
    order = ranking.order
    owner = ranking.neurons.model[order]
    return [order[owner == m] - ranking.neurons.model_slice(m).start for m in range(models)]


def _erasure_curves(states, hidden, targets, orders, directions, *, random: int, seed: int) -> dict:
    """Held-out perplexity per ranking, kind (top, bottom, random) and model, against the erased fraction."""
    width = hidden[0].shape[1]
    counts = [round(f * width) for f in FRACTIONS]
    curves = {name: {"top": [], "bottom": [], "random": [], "random_runs": []} for name in RANKINGS}
    for m, (graphdef, state) in enumerate(states):
        entries = []  # (key, readout transform)
        rng = np.random.default_rng([seed, m])
        for c, count in enumerate(counts):
            draws = [rng.permutation(width)[:count] for _ in range(random)]
            for r, units in enumerate(draws):
                entries.append((("neurons", "random", c, r), _zeroing(width, units)))
            for name in ("maxcorr", "mincorr", "linreg"):
                entries.append(((name, "top", c), _zeroing(width, orders[name][m][:count])))
                entries.append(((name, "bottom", c), _zeroing(width, orders[name][m][width - count:])))
            d = directions[m]
            valid = len(d.rho)
            k = min(count, valid)
            entries.append((("svcca", "top", c), _direction_erasure(d, np.arange(k))))
            entries.append((("svcca", "bottom", c), _direction_erasure(d, np.arange(valid - k, valid))))
            for r in range(random):
                chosen = np.sort(rng.permutation(valid)[:k])
                entries.append((("svcca", "random", c, r), _direction_erasure(d, chosen)))
        slots = {key: i for i, (key, _) in enumerate(entries)}
        matrices = jnp.asarray(np.stack([t[0] for _, t in entries]))
        offsets = jnp.asarray(np.stack([t[1] for _, t in entries]))
        ppl = np.asarray(_perplexities(graphdef, state, hidden[m], targets, matrices, offsets), np.float64)
        for name in RANKINGS:
            source = "svcca" if name == "svcca" else "neurons"
            runs = [[float(ppl[slots[(source, "random", c, r)]]) for c in range(len(counts))] for r in range(random)]
            curves[name]["random_runs"].append(runs)
            curves[name]["random"].append([float(np.mean([run[c] for run in runs])) for c in range(len(counts))])
            for kind in ("top", "bottom"):
                curves[name][kind].append([float(ppl[slots[(name, kind, c)]]) for c in range(len(counts))])
    return curves


def _mean_curves(curves: dict) -> dict:
    kinds = ("top", "bottom", "random")
    return {name: {kind: [float(v) for v in np.mean(np.asarray(per[kind]), axis=0)] for kind in kinds}
            for name, per in curves.items()}


# ---------------------------------------------------------------- control


def _word_profile(corpus: EnglishCorpus, inputs: np.ndarray, values: np.ndarray, *, top: int = 5,
                  min_count: int = 5) -> dict:
    """The input words after which a unit is highest and lowest on average (words seen ``min_count`` times)."""
    ids = inputs.reshape(-1)
    sums = np.bincount(ids, weights=values, minlength=len(corpus.vocab))
    counts = np.bincount(ids, minlength=len(corpus.vocab))
    seen = np.flatnonzero(counts >= min_count)
    means = sums[seen] / counts[seen]
    order = seen[np.lexsort((seen, -means))]
    return {"highest_after": corpus.words(order[:top]), "lowest_after": corpus.words(order[::-1][:top])}


def _control(corpus, states, hidden, targets, inputs, ranking: jn.Ranking, order: np.ndarray, *, count: int,
             value: float) -> list[dict]:
    """Set each of the top (and, for comparison, bottom) ``count`` units of model 0 to mean +- value std."""
    graphdef, state = states[0]
    h = np.asarray(hidden[0], np.float64)
    width = h.shape[1]
    mean, std = h.mean(axis=0), h.std(axis=0)
    chosen = [("top", int(u)) for u in order[:count]] + [("bottom", int(u)) for u in order[::-1][:count]]
    transforms, keys = [], []
    for group, unit in chosen:
        for sign in (-1.0, 1.0):
            matrix = np.eye(width, dtype=np.float32)
            matrix[:, unit] = 0
            offset = np.zeros(width, np.float32)
            offset[unit] = mean[unit] + sign * value * std[unit]
            transforms.append((matrix, offset))
            keys.append((group, unit, sign * value))
    if not transforms:
        return []
    matrices = jnp.asarray(np.stack([t[0] for t in transforms]))
    kl, shift, ppl = _control_effects(graphdef, state, hidden[0], targets, matrices,
                                      jnp.asarray(np.stack([t[1] for t in transforms])))
    kl, shift, ppl = (np.asarray(a, np.float64) for a in (kl, shift, ppl))
    flat = ranking.neurons.model_slice(0).start
    results = []
    for i, (group, unit, v) in enumerate(keys):
        promoted = np.lexsort((np.arange(len(shift[i])), -shift[i]))[:5]
        demoted = np.lexsort((np.arange(len(shift[i])), shift[i]))[:5]
        results.append({
            "group": group, "neuron": ranking.neurons.label(flat + unit), "unit": unit,
            "maxcorr": float(ranking.scores[flat + unit]), "v": v, "value": float(mean[unit] + v * std[unit]),
            "kl": float(kl[i]), "perplexity": float(ppl[i]),
            "promoted": [{"word": corpus.vocab[j], "shift": float(shift[i][j])} for j in promoted],
            "demoted": [{"word": corpus.vocab[j], "shift": float(shift[i][j])} for j in demoted],
            **_word_profile(corpus, inputs, h[:, unit]),
        })
    return results


# ---------------------------------------------------------------- ON-LSTM trees


def _punctuation_segments(words: list[str]) -> set[tuple[int, int]]:
    """Maximal runs (two tokens or more, not the whole sentence) between punctuation marks."""
    segments, start = set(), 0
    for i, word in enumerate([*words, "."]):
        if word in PUNCTUATION:
            if i - start > 1 and (start, i) != (0, len(words)):
                segments.add((start, i))
            start = i + 1
    return segments


def _syntax(corpus: EnglishCorpus, states, *, seed: int) -> dict:
    """Trees from the master-forget distances on held-out sentences, against right-branching and punctuation."""
    sentences = [s for s in corpus.heldout if len(s) >= 4]
    longest = max(len(s) for s in sentences)
    padded = np.zeros((len(sentences), longest), np.int32)
    for i, s in enumerate(sentences):
        padded[i, : len(s)] = s  # right padding: the recurrence is causal, earlier steps are unaffected
    rng = np.random.default_rng([seed, 7])
    per_model, example = [], None
    for m, (graphdef, state) in enumerate(states):
        distances = np.asarray(_hidden(graphdef, state, jnp.asarray(padded))[1], np.float64)
        scores = {"f1_right_branching": [], "segment_recall": [], "random_f1_right_branching": [],
                  "random_segment_recall": [], "right_branching_segment_recall": []}
        at_punctuation, after_punctuation, at_words = [], [], []
        for i, s in enumerate(sentences):
            words = corpus.words(s)
            n = len(words) - 1 if words[-1] in SENTENCE_FINAL else len(words)  # the final mark is left out
            words, d = words[:n], distances[i, :n]
            right = tree_spans(build_tree(np.arange(n, 0, -1, dtype=np.float64), range(n)))
            induced = tree_spans(build_tree(d, range(n)))
            chance = tree_spans(build_tree(rng.random(n), range(n)))
            scores["f1_right_branching"].append(bracket_f1(induced, right))
            scores["random_f1_right_branching"].append(bracket_f1(chance, right))
            segments = _punctuation_segments(words)
            if segments:
                scores["segment_recall"].append(len(induced & segments) / len(segments))
                scores["random_segment_recall"].append(len(chance & segments) / len(segments))
                scores["right_branching_segment_recall"].append(len(right & segments) / len(segments))
            marks = np.array([w in PUNCTUATION for w in words])
            at_punctuation.extend(d[marks])
            at_words.extend(d[~marks])
            after_punctuation.extend(d[1:][marks[:-1] & ~marks[1:]])  # the word read right after a mark
            if m == 0 and example is None and 10 <= n <= 20 and segments:
                example = {"words": words, "distances": [float(v) for v in d],
                           "tree": _bracketed(build_tree(d, words))}
        summary = {k: float(np.mean(v)) for k, v in scores.items()}
        summary.update({"distance_at_punctuation": float(np.mean(at_punctuation)),
                        "distance_after_punctuation": float(np.mean(after_punctuation)),
                        "distance_at_words": float(np.mean(at_words))})
        per_model.append(summary)
    mean = {k: float(np.mean([p[k] for p in per_model])) for k in per_model[0]}
    return {"sentences": len(sentences), "per_model": per_model, "mean": mean, "example": example}


def _bracketed(tree) -> str:
    return f"({' '.join(_bracketed(t) for t in tree)})" if isinstance(tree, tuple) else str(tree)


# ---------------------------------------------------------------- plots


def _plot_curves(mean: dict, intact: float, hidden: int, path: Path) -> Path:
    import matplotlib  # lazily: `import jneuron` does not import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    percent = [100 * f for f in FRACTIONS]
    fig, axes = plt.subplots(1, len(RANKINGS), figsize=(4 * len(RANKINGS), 3.6), sharey=True)
    styles = {"top": ("tab:red", "top-ranked first"), "bottom": ("tab:blue", "bottom-ranked first"),
              "random": ("gray", "random (mean)")}
    for ax, name in zip(axes, RANKINGS):
        for kind, (colour, label) in styles.items():
            ax.plot(percent, mean[name][kind], marker="o", color=colour, label=label)
        ax.axhline(intact, color="black", linestyle=":", linewidth=1)
        ax.set_title(f"{name} ({'directions' if name == 'svcca' else 'neurons'})")
        ax.set_xlabel(f"% of {hidden} erased")
    axes[0].set_ylabel("held-out perplexity (mean over models)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Erasing ranked neurons in word-level LMs (Bau et al. 2019, Fig. 4 shape)")
    return _save(fig, plt, path)


def _plot_example(example: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(example["words"])), 3))
    ax.bar(range(len(example["words"])), example["distances"], color="tab:green")
    ax.set_xticks(range(len(example["words"])), labels=example["words"], rotation=60, fontsize=8)
    ax.set_ylabel("master-forget distance")
    ax.set_title("ON-LSTM syntactic distance on a held-out sentence")
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------- the study


def run(args: argparse.Namespace) -> int:
    size = _size(args)
    start, cpu = time.perf_counter(), time.process_time()
    corpus = load_english(vocab_size=size["vocab"], seed=args.seed)
    train_x, train_y = corpus.windows("train", size["window"])
    held_x, held_y = corpus.windows("heldout", size["window"])
    seeds = [args.seed + i for i in range(size["models"])]
    kind = "ON-LSTM" if args.onlstm else "LSTM"
    print(f"training {len(seeds)} {kind} LMs ({size['hidden']} units, vocabulary {size['vocab']}) on "
          f"{corpus.tokens('train')} tokens of pydoc_data prose, {size['epochs']} epochs")
    models = train_word_lms(seeds, train_x, train_y, vocab=size["vocab"], embed=size["embed"], hidden=size["hidden"],
                            onlstm=args.onlstm, chunk_size=args.chunk_size, epochs=size["epochs"],
                            batch_size=size["batch"], learning_rate=args.learning_rate)
    states = [nnx.split(m) for m in models]
    names = [f"lm{s}" for s in seeds]
    hidden = [np.asarray(_hidden(g, s, jnp.asarray(held_x))[0]).reshape(-1, size["hidden"]) for g, s in states]
    targets = jnp.asarray(held_y.reshape(-1))
    hidden_j = [jnp.asarray(h) for h in hidden]
    identity = (jnp.eye(size["hidden"])[None], jnp.zeros((1, size["hidden"])))
    intact = [float(_perplexities(g, s, h, targets, *identity)[0]) for (g, s), h in zip(states, hidden_j)]
    print("held-out perplexity: " + ", ".join(f"{n} {p:.1f}" for n, p in zip(names, intact)))

    maxcorr = jn.maxcorr(hidden, names=names)
    rankings = {"maxcorr": maxcorr, "mincorr": jn.mincorr(hidden, names=names),
                "linreg": jn.linreg_ranking(hidden, names=names)}
    orders = {name: _unit_orders(r, len(models)) for name, r in rankings.items()}
    directions = [jn.direction_ranking(hidden[m], [h for o, h in enumerate(hidden) if o != m], name=names[m])
                  for m in range(len(models))]
    curves = _erasure_curves(states, hidden_j, targets, orders, directions, random=args.random, seed=args.seed)
    mean = _mean_curves(curves)
    at = FRACTIONS.index(0.2)
    at_20 = {name: {kind: mean[name][kind][at] for kind in ("top", "bottom", "random")} for name in RANKINGS}
    for name, row in at_20.items():
        print(f"erasing 20% by {name}: top {row['top']:.1f}, bottom {row['bottom']:.1f}, random {row['random']:.1f} "
              f"(intact {np.mean(intact):.1f})")
    control = _control(corpus, states, hidden_j, targets, held_x, maxcorr, orders["maxcorr"][0],
                       count=args.control, value=args.control_value)
    syntax = _syntax(corpus, states, seed=args.seed) if args.onlstm else None
    if syntax:
        print("ON-LSTM trees: " + ", ".join(f"{k} {v:.3f}" for k, v in syntax["mean"].items()))

    result = {
        "study": "crosslm", "title": f"Cross-model neurons in word-level {kind} language models",
        "config": {**size, "onlstm": args.onlstm, "chunk_size": args.chunk_size, "learning_rate": args.learning_rate,
                   "random": args.random, "control": args.control, "control_value": args.control_value,
                   "seed": args.seed},
        "corpus": {"source": "pydoc_data.topics prose", "train_tokens": corpus.tokens("train"),
                   "heldout_tokens": corpus.tokens("heldout"), "train_sentences": len(corpus.train),
                   "heldout_sentences": len(corpus.heldout), "vocab": len(corpus.vocab),
                   "heldout_unk_rate": float(np.mean(np.concatenate(corpus.heldout) == 0))},
        "models": [{"name": n, "seed": s, "heldout_perplexity": p} for n, s, p in zip(names, seeds, intact)],
        "fractions": list(FRACTIONS), "erasure": curves, "erasure_mean": mean, "at_20": at_20,
        "intact_mean": float(np.mean(intact)),
        "rankings": {name: [{k: v for k, v in rec.items() if k != "r2"} for rec in r.top(10)]
                     for name, r in rankings.items()},
        "svcca_rho": [[float(v) for v in d.rho] for d in directions],
        "control": control, "syntax": syntax,
    }
    written = [atomic_write_json(args.out / "crosslm.json", result),
               _plot_curves(mean, float(np.mean(intact)), size["hidden"], args.out / "crosslm.png")]
    if syntax and syntax["example"]:
        written.append(_plot_example(syntax["example"], args.out / "crosslm-trees.png"))
    for path in written:
        print(f"wrote {path}")
    print(f"finished in {time.perf_counter() - start:.1f} s ({time.process_time() - cpu:.1f} s CPU in this process)")
    return 0
