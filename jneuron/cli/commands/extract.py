"""Extract a BERT-family model's activations: ``jneuron extract MODEL sentences.txt --out acts.zarr``.

Reads a Hugging Face checkpoint folder (``config.json``, ``model.safetensors``, ``tokenizer.json``; needs the
``lm`` extra) and a text file with one sentence per line (words split at whitespace, as NeuroX), and writes
a zarr activation store with one row per word: the embedding output and every layer's hidden state
(``embeddings``, ``layers/0``, ...) and MLP neurons after the activation (``layers/0/mlp/post``, ...), each
word represented by its first, last or mean sub-word (``--subword``). The words and their sentence ids are
stored with the rows; padding and special tokens are never written. The model runs in float32 on the
``--devices`` device; ``--chunk-tokens`` sets the rows per stored chunk. An
interrupted run resumes where it stopped when started again with the same arguments (its ``--out`` store is
its checkpoint).
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

from typing import TYPE_CHECKING

from jneuron.cli.options import add_streaming_arguments, device_scope, progress_for, shard_count
from jneuron.errors import JNeuronError

if TYPE_CHECKING:
    from jneuron.data.store import StoreWriter

NAME = "extract"
HELP = "write a BERT-family model's word-level hidden states and MLP neurons on a text file to a zarr store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", type=Path, metavar="MODEL",
                        help="a Hugging Face checkpoint folder (BERT, MiniLM)")
    parser.add_argument("text", type=Path, help="one sentence per line, words separated by spaces")
    parser.add_argument("--out", type=Path, required=True, help="the store to write (a .zarr folder)")
    parser.add_argument("--subword", choices=("first", "last", "mean"), default="last",
                        help="which sub-word represents a word (default: last, as NeuroX)")
    parser.add_argument("--model-name", default=None, help="the model's name in the store (default: the folder's)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass (default 32)")
    parser.add_argument("--no-mlp", action="store_true", help="hidden states only, no MLP neurons")
    add_streaming_arguments(parser, refused={"checkpoint": "extract resumes from its --out store: run the same "
                                                           "command again"})


def _fingerprint(args, lines: list[str]) -> dict:
    digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
    return {"checkpoint": str(args.model_folder.resolve()), "text_sha256": digest, "sentences": len(lines),
            "subword": args.subword, "mlp": not args.no_mlp}


def _layers(config, mlp: bool) -> list[str]:
    layers = ["embeddings", *(f"layers/{i}" for i in range(config.num_hidden_layers))]
    if mlp:
        layers += [f"layers/{i}/mlp/post" for i in range(config.num_hidden_layers)]
    return layers


def _truncate(writer: StoreWriter, rows: int) -> None:
    """Cut every array back to ``rows`` (drops a batch half-written when a run was stopped)."""
    group = writer.group
    for entry in writer.meta["arrays"]:
        array = group[entry["key"]]
        if array.shape[0] != rows:
            array.resize((rows, array.shape[1]))
    if "_tokens_ends" in group:
        ends = group["_tokens_ends"]
        ends.resize((rows,))
        size = int(ends[rows - 1]) if rows else 0
        group["_tokens_bytes"].resize((size,))
        group["_sentence"].resize((rows,))


def _open(args, fingerprint: dict, model_name: str) -> tuple[StoreWriter, int, int]:
    """The writer and where to start: ``(writer, sentences done, rows written)``."""
    from jneuron.data.store import StoreWriter

    out: Path = args.out
    if (out / "zarr.json").is_file():
        writer = StoreWriter(out, mode="a", chunk_tokens=args.chunk_tokens)
        state = writer.meta.get("extract")
        if state is None or state["input"] != fingerprint or state["model"] != model_name:
            raise JNeuronError(f"--out {out} exists and was not written by this extraction (other checkpoint, "
                               "text or options); remove it or choose another --out")
        _truncate(writer, state["rows"])
        return writer, state["done"], state["rows"]
    if out.exists():
        raise JNeuronError(f"--out {out} exists and is not an activation store")
    with StoreWriter(out, tokenization=f"words ({args.subword} sub-word of {args.model_folder.name})") as new:
        new.meta["extract"] = {"input": fingerprint, "model": model_name, "done": 0, "rows": 0, "complete": False}
        new._save_meta()
    return StoreWriter(out, mode="a", chunk_tokens=args.chunk_tokens), 0, 0


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise JNeuronError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.dtype == "float64":
        raise JNeuronError("--dtype float64 is not supported: extract runs the model in float32 (its BERT "
                           "implementation computes in float32)")
    if (shard_count(args.devices) or 1) > 1:
        raise JNeuronError(f"--devices {args.devices} is not supported: extract runs the model on one device; name "
                           "it (e.g. --devices gpu:0)")
    if not args.text.is_file():
        raise JNeuronError(f"{args.text}: no such text file")
    lines = args.text.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise JNeuronError(f"{args.text}: no sentences (the file is empty)")
    with device_scope(args):
        return _extract(args, lines)


def _extract(args: argparse.Namespace, lines: list[str]) -> int:
    """Run the model on ``lines`` a batch at a time, appending to the store."""
    import jax  # JAX, the model and numpy load only when the command runs (--help stays quick)
    import numpy as np

    from jneuron.flax.capturing import run_with_cache
    from jneuron.models import bert

    model, tokenizer = bert.load(args.model_folder)
    model_name = args.model_name or re.sub(r"[/,]", "_", args.model_folder.resolve().name) or "model"
    layers = _layers(model.config, not args.no_mlp)
    writer, done, rows = _open(args, _fingerprint(args, lines), model_name)
    state = writer.meta["extract"]
    if state["complete"]:
        print(f"{args.out} is complete: {rows} words of {len(lines)} sentences")
        return 0
    forward = jax.jit(lambda m, batch: run_with_cache(m, batch, layers)[1])
    progress = progress_for(args, len(lines), unit="sentences")
    if done:
        progress(done)
    words = [line.split() for line in lines]
    for start in range(done, len(lines), args.batch_size):
        part = words[start : start + args.batch_size]
        encoded = bert.encode(tokenizer, part, max_length=model.config.max_position_embeddings, first=start + 1)
        length = -(-encoded["input_ids"].shape[1] // 16) * 16  # positions rounded up: few compiled shapes
        encoded = bert.encode(tokenizer, part, length=min(length, model.config.max_position_embeddings),
                              max_length=model.config.max_position_embeddings, first=start + 1)
        batch = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        cache = forward(model, batch)
        for layer in layers:
            pooled, sentence, word = bert.pool_words(np.asarray(cache[layer]), encoded["word_ids"], args.subword)
            writer.append(model_name, layer, pooled)
        writer.append_text([part[s][w] for s, w in zip(sentence, word)], sentence + start)
        rows += len(sentence)
        state.update(done=start + len(part), rows=rows)
        writer._save_meta()
        progress(len(part))
    state["complete"] = True
    writer._save_meta()
    writer.close()
    progress.close()
    print(f"wrote {args.out}: {rows} words of {len(lines)} sentences, {len(layers)} layers of {model_name}")
    return 0
