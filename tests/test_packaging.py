"""Every package folder is listed in pyproject.toml, so a wheel install has all of jneuron."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"jneuron.kernels"}
    for init in (ROOT / "jneuron").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    assert found == listed, f"missing from pyproject: {found - listed}; listed but absent: {listed - found}"
