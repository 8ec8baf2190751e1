"""Find and replace submodules of a Flax NNX model by path, as Flax shows them (``"encoder/layers/3/mlp"``).

A path names a submodule's output; ``"encoder/layers/3/mlp:input"`` names its first input. Adapters wrap
submodules (:class:`Wrapper`: recording, masking); paths look through wrappers, so a model already wrapped
at ``"a"`` still has its submodule ``"a/b"`` (never ``"a/inner/b"``), and a block and a submodule inside it
can be named together in any order.

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


INPUT = ":input"  # suffix naming a submodule's first positional input instead of its output


class Wrapper(nnx.Module):
    """An adapter's wrapper around a submodule (``self.inner``); paths look through it."""


def path_text(path: str | Sequence[str | int]) -> str:
    """A path as ``a/b/0``: Flax's tuple form ``("a", "b", 0)`` is accepted too."""
    return path if isinstance(path, str) else "/".join(str(part) for part in path)


def split_site(layer: str) -> tuple[str, bool]:
    """``"a/b:input"`` -> ``("a/b", True)``; ``"a/b"`` -> ``("a/b", False)``."""
    return (layer[: -len(INPUT)], True) if layer.endswith(INPUT) else (layer, False)


def depth(layer: str) -> int:
    """How deep a path sits (wrap deeper paths first, so an outer wrapper wraps the inner ones)."""
    return split_site(layer)[0].count("/")


def _logical(model: nnx.Module) -> dict[str, tuple[tuple, nnx.Module]]:
    """Logical path -> (raw path, module), in graph order; a wrapper and what it wraps share a path, the
    outermost wins. One walk over the graph."""
    items = list(nnx.iter_modules(model))
    modules = dict(items)
    order = {raw: k for k, (raw, _) in enumerate(items)}
    found: dict[str, tuple[tuple, nnx.Module]] = {}
    for raw, module in sorted(items, key=lambda item: len(item[0])):
        if not raw:
            continue
        parts = [part for k, part in enumerate(raw)
                 if not (part == "inner" and isinstance(modules.get(raw[:k]), Wrapper))]
        found.setdefault(path_text(parts), (raw, module))
    return dict(sorted(found.items(), key=lambda item: order[item[1][0]]))


def module_paths(model: nnx.Module) -> dict[str, nnx.Module]:
    """Every submodule of ``model`` (not the model itself) by its ``/``-joined path, in graph order
    (through wrappers: a wrapped submodule appears once, as its outermost wrapper)."""
    return {path: module for path, (_, module) in _logical(model).items()}


def _child(parent, key):
    return parent[key] if isinstance(parent, (nnx.List, list, nnx.Dict, dict)) else getattr(parent, key)


def _set_child(parent, key, new) -> None:
    if isinstance(parent, (nnx.List, list)):
        parent[int(key)] = new
    elif isinstance(parent, (nnx.Dict, dict)):
        parent[key] = new
    else:
        setattr(parent, key, new)


def wrap_all(model: nnx.Module, layers: Sequence[str], make) -> None:
    """Put ``make(module, layer)`` around each layer of ``model`` in place, deepest first, so a block and a
    submodule inside it (or a submodule's input and output) can all be wrapped, in any order. The graph is
    walked once: wrapping a deeper module never moves a shallower one."""
    logical = _logical(model)
    for layer in sorted(layers, key=depth, reverse=True):
        parent, last = _parent_of(model, logical, layer)
        _set_child(parent, last, make(_child(parent, last), layer))


def _parent_of(model: nnx.Module, logical: dict, layer) -> tuple[nnx.Module, object]:
    """The module holding ``layer``'s submodule and the submodule's key in it (``logical``: :func:`_logical`)."""
    path = split_site(path_text(layer))[0]
    if path not in logical:
        raise _unknown(path, list(module_paths(model)))
    *parents, last = logical[path][0]
    parent = model
    for part in parents:
        parent = _child(parent, part)
    return parent, last


def _unknown(path: str, known: Sequence[str]) -> JNeuronError:
    listed = ", ".join(f"'{p}'" for p in known) or "(none)"
    return JNeuronError(f"no layer '{path}' in the model; the layers are: {listed}")


def find(model: nnx.Module, path: str | Sequence[str | int]) -> nnx.Module:
    """The submodule at ``path``; an unknown path raises :class:`JNeuronError` listing the layers that exist."""
    path = split_site(path_text(path))[0]
    modules = module_paths(model)
    if path not in modules:
        raise _unknown(path, list(modules))
    return modules[path]


def check_layers(model: nnx.Module, layers: Sequence[str]) -> tuple[str, ...]:
    """Validate a list of layer paths (known, no duplicates); returns them as a tuple."""
    if isinstance(layers, str):
        layers = [layers]
    layers = tuple(path_text(layer) for layer in layers)
    if not layers:
        raise JNeuronError("no layers given: name at least one layer path")
    if len(set(layers)) != len(layers):
        raise JNeuronError(f"layer paths must be unique, got {list(layers)}")
    modules = module_paths(model)
    for layer in layers:
        if split_site(layer)[0] not in modules:
            raise _unknown(layer, list(modules))
    return layers


def replace(model: nnx.Module, path: str | Sequence[str | int], new: nnx.Module) -> None:
    """Put ``new`` at ``path`` in ``model`` (in place): the surgery behind capture and ablation."""
    parent, last = _parent_of(model, _logical(model), path)
    _set_child(parent, last, new)
