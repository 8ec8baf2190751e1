"""Find and replace a child module of an NNX model by its path (``"layers/0"`` or ``("layers", 0)``)."""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from jneuron.errors import JNeuronError

Path = str | Sequence[str | int]


def path_parts(path: Path) -> tuple[str | int, ...]:
    """``"layers/0"`` -> ``("layers", 0)``; a tuple is returned with digit strings made ints."""
    parts = path.split("/") if isinstance(path, str) else list(path)
    parts = [int(p) if isinstance(p, str) and p.isdigit() else p for p in parts if p != ""]
    if not parts:
        raise JNeuronError("empty layer path; name a child module such as 'layers/0'")
    return tuple(parts)


def path_name(path: Path) -> str:
    """The canonical ``a/b/0`` spelling of a path."""
    return "/".join(str(p) for p in path_parts(path))


def _child(parent, part: str | int, where: str):
    try:
        return parent[part] if isinstance(part, int) else getattr(parent, part)
    except (AttributeError, IndexError, KeyError, TypeError):
        children = sorted(str(name) for name, _ in nnx.iter_children(parent)) if isinstance(
            parent, nnx.Module) or isinstance(parent, nnx.List) else []
        raise JNeuronError(f"no child {part!r} under {where or 'the model'}; children there: {children}") from None


def locate(model: nnx.Module, path: Path) -> tuple[object, str | int, nnx.Module]:
    """The parent, the last path part, and the module at ``path``."""
    parts = path_parts(path)
    parent = model
    for i, part in enumerate(parts[:-1]):
        parent = _child(parent, part, "/".join(map(str, parts[:i])))
    layer = _child(parent, parts[-1], "/".join(map(str, parts[:-1])))
    if not callable(layer):
        raise JNeuronError(f"{path_name(path)} is a {type(layer).__name__}, not a callable layer")
    return parent, parts[-1], layer


def replace(model: nnx.Module, path: Path, module: nnx.Module) -> None:
    """Put ``module`` at ``path`` in ``model`` (in place)."""
    parent, key, _ = locate(model, path)
    if isinstance(key, int):
        parent[key] = module
    else:
        setattr(parent, key, module)
