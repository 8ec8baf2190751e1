"""The Neural Rejuvenation study: train a BatchNorm MLP on the digits with L1 on the BatchNorm scales, watch
utilization fall, rejuvenate, train on; report test accuracy and utilization per epoch (JSON + PNG)."""

from __future__ import annotations

import argparse
import functools
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jneuron.cli.options import add_out_argument
from jneuron.data.atomic import atomic_write_bytes, atomic_write_json
from jneuron.errors import JNeuronError

if TYPE_CHECKING:
    import jax
    from flax import nnx

    from jneuron.flax.rejuvenation import BNMLP

NAME = "study-rejuvenation"
HELP = "Neural Rejuvenation on the bundled digits: utilization and accuracy before and after rejuvenating"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_out_argument(parser, "rejuvenation-output")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="hidden widths (default 64 64)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs before rejuvenating (default 30)")
    parser.add_argument("--epochs-after", type=int, default=20, help="epochs after rejuvenating (default 20)")
    parser.add_argument("--l1", type=float, default=0.03, help="L1 strength on BatchNorm scales (default 0.03)")
    parser.add_argument("--l1-after", type=float, default=0.0,
                        help="L1 strength after rejuvenating (default 0: let the revived neurons train)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--threshold", type=float, default=0.01, help="dead below this fraction of max |gamma|")
    parser.add_argument("--reallocate", action="store_true", help="reallocate widths under the same budget")
    parser.add_argument("--seed", type=int, default=0, help="seed for the model, batches and revived weights")


def _training(model: nnx.Module, flag: bool) -> nnx.Module:
    from flax import nnx

    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            node.use_running_average = not flag
    return model


def _fit(model: BNMLP, x, y, *, epochs: int, l1: float, learning_rate: float, key: jax.Array, batch_size: int = 64,
         on_epoch=None) -> BNMLP:
    """Adam on cross-entropy plus L1 on the BatchNorm scales; each epoch is one compiled ``lax.scan``."""
    import jax
    import optax
    from flax import nnx

    from jneuron.flax.rejuvenation import bn_scale_l1

    graphdef, params, stats = nnx.split(_training(model, True), nnx.Param, nnx.BatchStat)
    optimizer = optax.chain(bn_scale_l1(model, l1), optax.adam(learning_rate))
    batches = len(y) // batch_size

    def loss_fn(params, stats, xb, yb):
        module = nnx.merge(graphdef, params, stats, copy=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(module(xb), yb).mean()
        return loss, nnx.state(module, nnx.BatchStat)

    @jax.jit
    def epoch(carry, key):
        order = jax.random.permutation(key, len(y))[: batches * batch_size].reshape(batches, batch_size)

        def step(carry, index):
            params, stats, opt_state = carry
            grads, stats = jax.grad(loss_fn, has_aux=True)(params, stats, x[index], y[index])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), stats, opt_state), None

        return jax.lax.scan(step, carry, order)[0]

    carry = (params, stats, optimizer.init(params))
    for i, k in enumerate(jax.random.split(key, epochs)):
        carry = epoch(carry, k)
        if on_epoch is not None:
            on_epoch(i, nnx.merge(graphdef, carry[0], carry[1], copy=True))
    return _training(nnx.merge(graphdef, carry[0], carry[1], copy=True), False)


@functools.cache
def _predictor():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    @functools.partial(jax.jit, static_argnums=0)
    def predict(graphdef, state, x):
        return jnp.argmax(nnx.merge(graphdef, state, copy=True)(x), axis=-1)

    return predict


def _accuracy(model: BNMLP, x, y) -> float:
    import jax.numpy as jnp
    from flax import nnx

    return float(jnp.mean(_predictor()(*nnx.split(_training(nnx.clone(model), False)), x) == y))


def _plot(history: list[dict], at: int, path: Path) -> Path:
    import matplotlib  # lazily: plotting is optional

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [h["accuracy"] for h in history], label="test accuracy")
    ax.plot(epochs, [h["utilization"] for h in history], label="utilization")
    ax.axvline(at, color="gray", linestyle="--", label="rejuvenation")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    ax.set_title("Neural Rejuvenation on digits")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def run(args: argparse.Namespace) -> int:
    if args.epochs < 1 or args.epochs_after < 0:
        raise JNeuronError("--epochs must be at least 1 and --epochs-after non-negative")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jneuron.data.bundled import load_digits
    from jneuron.flax.rejuvenation import BNMLP, dead_neurons, rejuvenate, utilization
    start = time.perf_counter()
    digits = load_digits()
    train, test = digits.split(seed=args.seed)
    x, y = jnp.asarray(train.images, jnp.float32), jnp.asarray(train.labels, jnp.int32)
    x_test, y_test = jnp.asarray(test.images, jnp.float32), jnp.asarray(test.labels, jnp.int32)
    key = jax.random.key(args.seed)
    history: list[dict] = []

    def record(phase: str, offset: int):
        def on_epoch(i: int, model: BNMLP) -> None:
            dead = dead_neurons(model, args.threshold)
            entry = {"epoch": offset + i + 1, "phase": phase, "accuracy": _accuracy(model, x_test, y_test),
                     "utilization": utilization(model, args.threshold),
                     "live": [int((~d).sum()) for d in dead.values()],
                     "widths": [int(d.size) for d in dead.values()]}
            history.append(entry)
            print(f"epoch {entry['epoch']:3d} ({phase}): accuracy {entry['accuracy']:.3f}, "
                  f"utilization {entry['utilization']:.3f}, live {entry['live']} of {entry['widths']}")
        return on_epoch

    model = BNMLP(64, args.hidden, 10, rngs=nnx.Rngs(args.seed))
    model = _fit(model, x, y, epochs=args.epochs, l1=args.l1, learning_rate=args.learning_rate,
                 key=jax.random.fold_in(key, 0), on_epoch=record("sparse", 0))
    model = rejuvenate(model, jax.random.fold_in(key, 1), threshold=args.threshold, reallocate=args.reallocate)
    widths = [int(b.norm.scale[...].shape[0]) for b in model.blocks]
    print(f"rejuvenated: widths {widths}, utilization {utilization(model, args.threshold):.3f}, "
          f"accuracy {_accuracy(model, x_test, y_test):.3f}")
    at = args.epochs
    history.append({"epoch": at, "phase": "rejuvenated", "accuracy": _accuracy(model, x_test, y_test),
                    "utilization": utilization(model, args.threshold), "live": widths, "widths": widths})
    if args.epochs_after:
        model = _fit(model, x, y, epochs=args.epochs_after, l1=args.l1_after, learning_rate=args.learning_rate,
                     key=jax.random.fold_in(key, 2), on_epoch=record("after", at))
    names = ("hidden", "epochs", "epochs_after", "l1", "l1_after", "learning_rate", "threshold", "reallocate", "seed")
    config = {name: getattr(args, name) for name in names}
    result = {"study": "neural-rejuvenation", "dataset": "digits", "config": config, "rejuvenated_at": at,
              "history": history}
    json_path = atomic_write_json(args.out / "rejuvenation.json", result)
    png_path = _plot(history, at, args.out / "rejuvenation.png")
    print(f"wrote {json_path} and {png_path} in {time.perf_counter() - start:.1f} s")
    return 0
