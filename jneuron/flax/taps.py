"""Named tap points: mark any intermediate value of a model so adapters reach it like a submodule.

A :class:`Tap` is an identity submodule. A model author writes ``self.post = Tap()`` in ``__init__`` and
``h = self.post(gelu(self.fc1(x)))`` in ``__call__``; the value is then the output of the submodule at
``".../post"``, and ``capture``, ``ablate``, ``sweep``, ``control``, ``patch`` and ``conductance`` address
it by that path, exactly like any layer (the NNX idiom for TransformerLens's hook points).

>>> import jax, numpy as np
>>> from flax import nnx
>>> from jneuron import flax as jnf
>>> class Block(nnx.Module):
...     def __init__(self, rngs):
...         self.fc1, self.post, self.fc2 = nnx.Linear(4, 8, rngs=rngs), Tap(), nnx.Linear(8, 4, rngs=rngs)
...     def __call__(self, x):
...         return self.fc2(self.post(jax.nn.gelu(self.fc1(x))))
>>> jnf.capture(Block(nnx.Rngs(0)), np.ones((3, 4), np.float32), ["post"])["post"].shape
(3, 8)
"""

from __future__ import annotations

from flax import nnx


class Tap(nnx.Module):
    """An identity submodule marking a value by its path: ``Tap()(x)`` is ``x``."""

    def __call__(self, x):
        return x
