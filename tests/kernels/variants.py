"""The base of the kernel tests: each test runs its kernel with and without ``jax.jit`` (chex variants).

A kernel test is a method of a :class:`KernelTest` subclass decorated with
``@chex.variants(with_jit=True, without_jit=True)``; inside it, ``self.variant(fn)`` is ``fn`` jitted in
one variant and ``fn`` as it is in the other, so a kernel that only works traced (or only eagerly) fails.
Static arguments (tile layouts, bin counts) are closed over with a lambda or passed through
``self.variant(fn, static_argnames=...)``.
"""

from __future__ import annotations

import chex
import numpy as np

SEED = 20261120


class KernelTest(chex.TestCase):
    """A chex test case with the suite's random generator (``self.rng``, fresh per test)."""

    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(SEED)
