"""``import jneuron`` stays light: no plotting library and no file-format library until a function needs one.

Each import runs in a fresh interpreter (this process has long since imported everything), and the test
reads that interpreter's ``sys.modules``.
"""

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("matplotlib", "zarr", "h5py")


def imported_packages(statement: str) -> set[str]:
    """The top-level packages of HEAVY that a fresh interpreter has imported after ``statement``."""
    probe = f"import sys, json; {statement}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1])) & set(HEAVY)


@pytest.mark.parametrize("statement", [
    "import jneuron",
    "import jneuron.flax",
    "import jneuron.models",
    "import jneuron.report",
    "import jneuron.cli",
])
def test_import_loads_no_plotting_or_file_library(statement):
    heavy = imported_packages(statement)
    assert not heavy, f"`{statement}` imports {sorted(heavy)}"


def test_the_probe_sees_a_heavy_import():
    # the check above could pass by never seeing anything: here it must see matplotlib
    assert imported_packages("import matplotlib") == {"matplotlib"}
