"""Benchmark (issue 17): Flax adapters on a BERT encoder the size of all-MiniLM-L6-v2 (6 layers, hidden 384,
MLP 1,536, 12 heads; random weights: timing does not depend on them).

1. Capture of the 6 MLP layers' post-GELU neurons (``jnf.capture`` with ``valid=``: device run, copy to the
   host, padding dropped) against a plain jitted forward pass over the same batches (target: <= 1.2x).
2. A 64-mask ablation sweep over one real layer (``layers/3/mlp/post``, 1,536 neurons) with ``jnf.sweep``
   against a Python loop of ``jnf.ablate`` + a jitted forward per mask (target: >= 3x faster).

Steady-state times are the best of ``--repeats`` after a warm-up call (compiles excluded). Writes
``bench/results/transformers.json``. ``python bench/transformers.py [--sentences N --length T ...]``.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench._common import RESULTS, best_time
from jneuron import flax as jnf
from jneuron.data.atomic import atomic_write_text
from jneuron.models.bert import Bert, BertConfig

MINILM = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536)


def padded_batch(rng, sentences: int, length: int) -> dict[str, np.ndarray]:
    """Token ids with lengths drawn from [4, length] (about half the positions padding, as real batches)."""
    lengths = rng.integers(4, length + 1, size=sentences)
    ids = rng.integers(1000, 30000, size=(sentences, length)).astype(np.int32)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def capture_vs_forward(model, batch, batch_size: int, repeats: int) -> dict:
    layers = [f"layers/{i}/mlp/post" for i in range(MINILM.num_hidden_layers)]
    valid = batch["attention_mask"] > 0
    count = batch["input_ids"].shape[0]
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, b):
        return nnx.merge(graphdef, state)(**b)

    parts = [{k: jnp.asarray(v[s : s + batch_size]) for k, v in batch.items()} for s in range(0, count, batch_size)]

    def plain():
        return [jax.block_until_ready(forward(state, part)) for part in parts]

    def captured():
        return jnf.capture(model, batch, layers, batch_size=batch_size, valid=valid)

    t_plain, t_capture = best_time(plain, repeats), best_time(captured, repeats)
    rows = int(valid.sum())
    return {"sentences": count, "positions": batch["input_ids"].shape[1], "valid_rows": rows,
            "captured_floats": rows * MINILM.intermediate_size * len(layers),
            "forward_s": t_plain, "capture_s": t_capture, "ratio": t_capture / t_plain, "target_ratio": 1.2}


def sweep_vs_loop(model, batch, masks_count: int, repeats: int) -> dict:
    layer = "layers/3/mlp/post"
    rng = np.random.default_rng(1)
    masks = (rng.random((masks_count, MINILM.intermediate_size)) > 0.5).astype(np.float32)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    variant = jnf.ablate(model, {layer: np.ones(MINILM.intermediate_size, np.float32)})

    def score(m, b):
        return m(**b)[:, 0].sum()

    def swept():
        return jax.block_until_ready(jnf.sweep(variant, score, batch, masks={layer: masks}))

    forward = nnx.jit(score)

    def loop():
        return [float(forward(jnf.ablate(model, {layer: mask}), batch)) for mask in masks]

    t_sweep, t_loop = best_time(swept, repeats), best_time(loop, repeats)
    values = np.asarray(swept())
    assert np.allclose(values, loop(), rtol=1e-4, atol=1e-3), "sweep and loop disagree"
    return {"masks": masks_count, "sentences": int(batch["input_ids"].shape[0]),
            "positions": int(batch["input_ids"].shape[1]), "sweep_s": t_sweep, "loop_s": t_loop,
            "speedup": t_loop / t_sweep, "target_speedup": 3.0}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=64, help="sentences captured (default 64)")
    parser.add_argument("--length", type=int, default=64, help="positions per sentence (default 64)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass (default 32)")
    parser.add_argument("--sweep-sentences", type=int, default=4, help="sentences in the sweep's batch")
    parser.add_argument("--sweep-length", type=int, default=16, help="positions in the sweep's batch")
    parser.add_argument("--masks", type=int, default=64, help="masks in the sweep (default 64)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model = Bert(MINILM, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    result = {
        "device": str(jax.devices()[0]), "backend": jax.default_backend(),
        "capture": capture_vs_forward(model, padded_batch(rng, args.sentences, args.length), args.batch_size,
                                      args.repeats),
        "sweep": sweep_vs_loop(model, padded_batch(rng, args.sweep_sentences, args.sweep_length), args.masks,
                               args.repeats),
    }
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "transformers.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
