"""``import jneuron`` stays light: no plotting library and no file-format library until a function needs one.

The imports run in a fresh interpreter (this process has long since imported everything), one after the
other, and the test reads that interpreter's ``sys.modules`` after each.
"""

import json
import os
import subprocess
import sys

HEAVY = ("matplotlib", "zarr", "h5py")
STATEMENTS = ("import jneuron", "import jneuron.flax", "import jneuron.models", "import jneuron.report",
              "import jneuron.cli")


def heavy_after_each(statements) -> dict[str, list[str]]:
    """For each statement, run in order in one fresh interpreter: the packages of HEAVY imported so far."""
    probe = "\n".join([
        "import json, sys",
        "seen = {}",
        *(f"{s}\nseen[{s!r}] = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))" for s in statements),
        "print(json.dumps(seen))",
    ])
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_loads_no_plotting_or_file_library():
    loaded = heavy_after_each(STATEMENTS)
    assert loaded == {s: [] for s in STATEMENTS}, f"imported after each statement: {loaded}"


def test_the_probe_sees_a_heavy_import():
    # the check above could pass by never seeing anything: here it must see matplotlib
    assert heavy_after_each(["import jneuron", "import matplotlib"]) == {"import jneuron": [],
                                                                         "import matplotlib": ["matplotlib"]}
