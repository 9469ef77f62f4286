"""Run in a venv holding only `pip install packages/ilit-core`: fail unless it pulled in just numpy and pyyaml,
and `import ilit` loads no deep-learning framework."""

import subprocess
import sys
from importlib.metadata import distributions

allowed = {"ilit-core", "numpy", "pyyaml", "pip", "setuptools", "wheel"}
names = {d.metadata["Name"].lower().replace("_", "-") for d in distributions()}
extra = names - allowed
assert not extra, f"pip install ilit-core pulled in more than numpy and pyyaml: {sorted(extra)}"
code = ("import sys, ilit; bad = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'tensorflow', 'keras', 'mxnet', 'sklearn', 'scipy', 'pytest')]; assert not bad, bad")
subprocess.run([sys.executable, "-c", code], check=True)
print(f"light install OK: {sorted(names)}")
