"""Find and replace submodules of a Flax NNX model by path, as Flax shows them (``"encoder/layers/3/mlp"``).

>>> from flax import nnx
>>> from jneuron.models import MLP
>>> model = MLP(4, (3, 2), 2, rngs=nnx.Rngs(0))
>>> [p for p in module_paths(model) if p.startswith("layers/")]
['layers/0', 'layers/1']
>>> type(find(model, "layers/1")).__name__
'Dense'
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from jneuron.errors import JNeuronError


def _text(path: tuple) -> str:
    return "/".join(str(part) for part in path)


def module_paths(model: nnx.Module) -> dict[str, nnx.Module]:
    """Every submodule of ``model`` (not the model itself) by its ``/``-joined path, in graph order."""
    return {_text(path): module for path, module in nnx.iter_modules(model) if path}


def _unknown(path: str, known: Sequence[str]) -> JNeuronError:
    listed = ", ".join(f"'{p}'" for p in known) or "(none)"
    return JNeuronError(f"no layer '{path}' in the model; the layers are: {listed}")


def find(model: nnx.Module, path: str) -> nnx.Module:
    """The submodule at ``path``; an unknown path raises :class:`JNeuronError` listing the layers that exist."""
    modules = module_paths(model)
    if path not in modules:
        raise _unknown(path, list(modules))
    return modules[path]


def check_layers(model: nnx.Module, layers: Sequence[str]) -> tuple[str, ...]:
    """Validate a list of layer paths (known, no duplicates); returns them as a tuple."""
    if isinstance(layers, str):
        layers = [layers]
    layers = tuple(str(layer) for layer in layers)
    if not layers:
        raise JNeuronError("no layers given: name at least one layer path")
    if len(set(layers)) != len(layers):
        raise JNeuronError(f"layer paths must be unique, got {list(layers)}")
    modules = module_paths(model)
    for layer in layers:
        if layer not in modules:
            raise _unknown(layer, list(modules))
    return layers


def replace(model: nnx.Module, path: str, new: nnx.Module) -> None:
    """Put ``new`` at ``path`` in ``model`` (in place): the surgery behind capture and ablation."""
    find(model, path)
    *parents, last = path.split("/")
    parent = find(model, "/".join(parents)) if parents else model
    if isinstance(parent, (nnx.List, list)):
        parent[int(last)] = new
    elif isinstance(parent, (nnx.Dict, dict)):
        parent[last] = new
    else:
        setattr(parent, last, new)
