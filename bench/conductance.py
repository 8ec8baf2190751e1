"""Benchmark: neuron conductance of a hidden layer for many inputs.

Compares, on one run: jneuron (all path points of all inputs in one compiled, vmapped call), the baseline a
user would write (a Python loop over the path steps, one jitted gradient call per step over all inputs,
as Captum does), and the floor (the layer output and dF/dy at all path points of all inputs in one batch,
with no per-input structure, no reduction and no checks).
Writes bench/results/conductance.json atomically.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import best_time  # noqa: E402
from flax import nnx

from jneuron.data.atomic import atomic_write_text
from jneuron.flax import conductance
from jneuron.models import MLP

RESULTS = Path(__file__).parent / "results" / "conductance.json"



def _baseline(model: MLP, x: jax.Array, steps: int, target: int) -> np.ndarray:
    """Loop over steps; at each, dF/dy and y of layers/1 for all inputs (a user's straightforward version)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def grad_and_y(state, points):
        def f_of_y(y):
            m = nnx.merge(graphdef, state)
            return m.head(m.activation(y))[:, target].sum()

        m = nnx.merge(graphdef, state)
        y = m.layers[1](m.activation(m.layers[0](points)))
        return jax.grad(f_of_y)(y), y

    total, previous = 0.0, None
    for alpha in np.linspace(0.0, 1.0, steps + 1):
        grads, y = grad_and_y(state, alpha * x)
        if previous is not None:
            total = total + (grads + previous[0]) / 2 * (y - previous[1])
        previous = (grads, y)
    return np.asarray(total)


def _floor(model: MLP, x: jax.Array, steps: int, target: int):
    """The bare work: ``y`` and ``dF/dy`` of layers/1 at all inputs x path points in one batch, nothing else."""
    graphdef, state = nnx.split(model)
    points = (jnp.linspace(0.0, 1.0, steps + 1)[:, None, None] * x[None]).reshape(-1, x.shape[1])

    @jax.jit
    def run(state, points):
        m = nnx.merge(graphdef, state)
        y = m.layers[1](m.activation(m.layers[0](points)))
        return jax.grad(lambda y: m.head(m.activation(y))[:, target].sum())(y), y

    return lambda: jax.block_until_ready(run(state, points))


def main() -> None:
    rows = []
    with jax.default_matmul_precision("highest"):
        for inputs, width, steps in [(64, 256, 50), (256, 512, 50), (256, 1024, 100)]:
            model = MLP(width, (width, width), 10, rngs=nnx.Rngs(0))
            x = jax.random.normal(jax.random.key(1), (inputs, width))
            ours = best_time(lambda: conductance(model, x, "layers/1", target=3, steps=steps))
            base = best_time(lambda: _baseline(model, x, steps, 3), repeats=2)
            floor = best_time(_floor(model, x, steps, 3))
            check = np.abs(conductance(model, x, "layers/1", target=3, steps=steps).values
                           - _baseline(model, x, steps, 3)).max()
            row = {"inputs": inputs, "width": width, "steps": steps, "jneuron_s": ours, "baseline_s": base,
                   "floor_s": floor, "speedup_vs_baseline": base / ours, "jneuron_over_floor": ours / floor,
                   "max_abs_diff_vs_baseline": float(check)}
            rows.append(row)
            print(f"n={inputs} width={width} steps={steps}: jneuron {ours * 1e3:.1f} ms, baseline {base * 1e3:.1f} ms "
                  f"({base / ours:.2f}x), floor {floor * 1e3:.1f} ms (jneuron/floor {ours / floor:.2f}), "
                  f"max |diff| {check:.1e}")
    result = {"benchmark": "conductance", "device": str(jax.devices()[0]), "machine": platform.processor() or
              platform.machine(), "cpu_count": __import__("os").cpu_count(), "rows": rows}
    print(f"wrote {atomic_write_text(RESULTS, json.dumps(result, indent=1))}")


if __name__ == "__main__":
    main()
