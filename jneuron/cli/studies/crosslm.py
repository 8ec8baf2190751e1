"""The cross-model study of Bau et al. (ICLR 2019) on word-level language models of real English.

Trains several small word-level LSTM (or, with ``--onlstm``, ON-LSTM) language models that differ only
in their seed on the prose of Python's own help topics (:mod:`jneuron.data.english`), then on held-out
sentences:

- ranks the hidden neurons across the models by MaxCorr, MinCorr and LinReg, and each model's SVCCA
  directions against the other models;
- erases the top, bottom and random k% (k = 0..50%) of each model's neurons by each ranking inside the
  model (zeroing the hidden units fed to the readout; SVCCA erases directions around the mean with
  :meth:`jneuron.DirectionRanking.erasure`) and measures held-out perplexity: the shape of Bau et al.'s
  Figure 4;
- controls the top MaxCorr neurons of the first model (sets one to its mean +- v std) and reports what
  changes in the next-word distribution (KL from the intact model, most promoted and demoted words);
- with ``--onlstm``, builds trees from the master-forget distances (Shen et al., ICLR 2019) on held-out
  sentences (4 tokens or more, the final mark left out) and reports their agreement with a right-branching
  tree (unlabeled bracket F1, single tokens and the whole sentence left out), the share of the segments
  between punctuation marks they recover as constituents, the same two for trees from random distances
  and the right-branching tree, and the mean distance at, right after and away from punctuation.

Writes ``crosslm.json``, ``crosslm.png`` (the erasure curves) and, with ``--onlstm``, ``crosslm-trees.png``.
"""

from __future__ import annotations

import argparse

from jneuron.cli.options import add_out_argument

NAME = "study-crosslm"
HELP = "train word-level LSTM LMs with different seeds on Python's own English prose; rank, erase, control neurons"

SIZES = {  # the default size runs in under 3 minutes of CPU time on 2 cores; --full is larger
    "default": {"models": 3, "hidden": 64, "embed": 64, "vocab": 2000, "window": 35, "epochs": 10, "batch": 32},
    "full": {"models": 4, "hidden": 256, "embed": 128, "vocab": 4000, "window": 35, "epochs": 20, "batch": 32},
}
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
RANKINGS = ("maxcorr", "mincorr", "linreg", "svcca")
SENTENCE_FINAL = frozenset(".!?:;")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_out_argument(parser, "study-crosslm-output")
    parser.add_argument("--full", action="store_true", help="the larger size (4 models of 256 units, 20 epochs)")
    for name, text in (("models", "models (seeds)"), ("hidden", "recurrent units per model"),
                       ("embed", "embedding width"), ("vocab", "vocabulary size, <unk> included"),
                       ("window", "tokens per training window"), ("epochs", "training epochs"),
                       ("batch", "windows per training step")):
        parser.add_argument(f"--{name}", type=int, help=f"{text} (default {SIZES['default'][name]}, "
                                                         f"--full {SIZES['full'][name]})")
    parser.add_argument("--onlstm", action="store_true", help="ON-LSTM models, and trees from their distances")
    parser.add_argument("--chunk-size", type=int, default=4, help="ON-LSTM units per master-gate chunk (default 4)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--random", type=int, default=3, help="random erasures per fraction (default 3)")
    parser.add_argument("--control", type=int, default=3, help="top neurons controlled one by one (default 3)")
    parser.add_argument("--control-value", type=float, default=3.0,
                        help="controlled neurons are set to mean +- this many std (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split; model i has seed SEED + i")


def run(args: argparse.Namespace) -> int:
    from jneuron.cli.studies import (
        crosslm_experiment,  # JAX and the models load only when the study runs
    )

    return crosslm_experiment.run(args)
