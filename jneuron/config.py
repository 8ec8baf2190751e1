"""jneuron's tunables and shared numerical constants, in one documented place.

In the style of equinox's ``_config.py``: module-level constants, each read where it is used, when it is
used (``config.NAME`` inside the function, never copied into a default argument), so setting one changes
every later call::

    import jneuron.config
    jneuron.config.CHUNK_BYTES = 16 * 2**20     # smaller streamed chunks, e.g. on a small GPU

The tunables trade memory for speed; none of them changes a result beyond float rounding. An explicit
argument (``chunk_tokens=``, ``memory_budget=``, ``batch_size=``) always takes precedence.

>>> import jneuron.config as config
>>> config.CHUNK_BYTES // 2**20, config.MEMORY_BUDGET // 2**20, str(config.HIGHEST)
(64, 320, 'HIGHEST')
"""

import jax

HIGHEST = jax.lax.Precision.HIGHEST
"""Precision of every contraction (``jnp.dot``, ``einsum``, ``lax.dot_general``) in jneuron: full float32
(or float64) products on every backend. TPUs and recent GPUs would otherwise multiply float32 in bfloat16 or
TF32, about 3 significant digits, which the project's error bounds do not allow (DESIGN.md, "Numerics")."""

CHUNK_BYTES = 64 * 2**20
"""Default size of one streamed chunk of all models' columns, in bytes of float32 (several chunks are in
flight with the prefetch): the streaming pass's ``chunk_tokens`` when none is given is about this many bytes
(256 to 65,536 rows; :func:`jneuron.streaming.passes.default_chunk_tokens`)."""

MEMORY_BUDGET = 320 * 2**20
"""Bytes MaxCorr/MinCorr may hold in cross-product blocks at once (and their reduction); wider models
are ranked in several passes over the data (:func:`jneuron.crossmodel.maxcorr.passes_needed`)."""

CPU_MASKS_PER_STEP = 10
"""Ablation variants evaluated per ``lax.map`` step on CPU when ``batch_size="auto"`` (GPUs and TPUs take all
in one ``vmap``): cache-sized steps, measured fastest against 4, 25 and all in ``bench/adapters.py``."""

PROBE_EVALUATION_TOKENS = 16384
"""Tokens per evaluation step of stacked probes, bounding the ``(tokens, settings, classes)`` outputs held
at once (:func:`jneuron.probing.probe.confusion_counts`)."""

STORE_CHUNK_TOKENS = 8192
"""Rows per chunk of a written activation store (:func:`jneuron.write_store`, ``jneuron convert``): the unit
read and decompressed at a time."""

CONSTANT_ROUNDINGS = 8
"""A neuron is constant (dead) when all its values lie within this many roundings of its own magnitude:
``max - min <= CONSTANT_ROUNDINGS * eps(dtype) * max(|min|, |max|)``, the one rule of every analysis
(:mod:`jneuron.streaming.constant`)."""
