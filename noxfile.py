"""One nox session per package, each in its own venv with only that package's framework.

`nox` runs them all (the README's test command); `nox -s demo` runs the demo.
pip (nox's default virtualenv backend), not uv: the torch 2.13.0 CPU wheel comes from a local wheel
directory that only pip is configured to find.
"""

import functools
import os
import shutil
from typing import Callable

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["lint", "core", "metrics", "oldest", "pytorch", "tensorflow", "mxnet", "demo",
                        "tensorflow_demo", "mxnet_demo", "detection", "tensorflow_detection"]
nox.options.reuse_existing_virtualenvs = False

CORE = "./packages/ilit-core"
METRICS = "./packages/ilit-metrics"
TOY = "./packages/ilit-toy"

TORCH = "torch==2.13.0"
LINT = ("ruff==0.17.6", "mypy==2.4.1", "types-PyYAML", "numpy", "pytest")  # pytest: ilit.testing imports it
TENSORFLOW = ("tensorflow-cpu==2.21.0", "ai-edge-litert")
MXNET = ("mxnet==1.9.1", "numpy==1.23.5", "scipy==1.10.1")
#: the oldest versions ilit-core and ilit-metrics declare (numpy>=1.23, pyyaml>=6.0, pycocotools>=2.0.7) and
#: the oldest scikit-learn built for that numpy on Python 3.11
OLDEST = ("numpy==1.23.5", "pyyaml==6.0.1", "pycocotools==2.0.7", "scikit-learn==1.3.2")


def session(func: Callable[[nox.Session], None]) -> Callable[[nox.Session], None]:
    """A nox session that, with ILIT_NOX_DROP_VENVS=1 (set by .ci/run), deletes its virtualenv once it has run,
    passed or failed: a full `nox` then needs the disk of one framework venv at a time (TensorFlow ~1.8 GB,
    torch ~1.3 GB), not of all twelve at once (~13 GB), which once filled the CI machine's disk."""
    @functools.wraps(func)
    def run(session: nox.Session) -> None:
        try:
            func(session)
        finally:
            location = getattr(session.virtualenv, "location", None)
            if os.environ.get("ILIT_NOX_DROP_VENVS") == "1" and location:
                shutil.rmtree(location, ignore_errors=True)
    return nox.session(run)


def pytest(session: nox.Session, path: str, *extra: str) -> None:
    """Run pytest; its exit code 5 (no tests collected) fails the session like any other failure."""
    session.run("python", "-m", "pytest", path, "-q", "-p", "no:cacheprovider", *extra, *session.posargs)


@session
def lint(session: nox.Session) -> None:
    """ruff (ruff.toml) over every Python file and mypy (mypy.ini) over every package's sources, with one
    config each at the repo root; no framework is installed, so framework objects are typed as Any."""
    session.install(*LINT)
    session.run("ruff", "check", ".")
    session.run("mypy")


@session
def core(session: nox.Session) -> None:
    """ilit-core alone: proves the install stays light and no framework is imported."""
    session.install(CORE)
    session.run("python", "packages/ilit-core/tests/check_light_install.py")
    session.install(f"{CORE}[report]", TOY, "pytest", "hypothesis", "scikit-learn")  # report: matplotlib
    pytest(session, "packages/ilit-core/tests")
    pytest(session, "packages/ilit-toy/tests")  # the adaptor contract kit (ilit.testing) against the toy plugin


@session
def metrics(session: nox.Session) -> None:
    """ilit-metrics (with pycocotools) against its references (scikit-learn, pycocotools, the SQuAD v1.1 rules),
    driven by YAML name through the registry and a Tuner run on the toy adaptor; no framework is installed."""
    session.install(CORE, f"{METRICS}[coco]", TOY, "pytest", "hypothesis", "scikit-learn")
    session.run("python", "-c", "import importlib.util as u, sys; "
                "bad = [m for m in ('torch', 'tensorflow', 'keras', 'mxnet', 'jax') if u.find_spec(m)]; "
                "sys.exit(f'a deep-learning framework is installed: {bad}' if bad else 0)")
    pytest(session, "packages/ilit-metrics/tests")


@session
def oldest(session: nox.Session) -> None:
    """ilit-core and ilit-metrics on the oldest dependency versions they declare (OLDEST), so the lower
    bounds in their pyproject.toml are tested, not only claimed."""
    session.install(f"{CORE}[report]", TOY, "pytest", "hypothesis", *OLDEST)
    check = ("import numpy, yaml, sklearn; v = (numpy.__version__, yaml.__version__, sklearn.__version__); "
             "assert v == ('1.23.5', '6.0.1', '1.3.2'), v")
    session.run("python", "-c", check)
    pytest(session, "packages/ilit-core/tests")  # before ilit-metrics is installed, as in the core session
    session.install(f"{METRICS}[coco]", *OLDEST)
    session.run("python", "-c", check)
    pytest(session, "packages/ilit-metrics/tests")


@session
def pytorch(session: nox.Session) -> None:
    """ilit-pytorch with torch 2.13.0 (CPU)."""
    session.install(TORCH)
    session.install(CORE, f"{METRICS}[coco]", "./packages/ilit-pytorch[torch,pt2e]", "pytest", "scikit-learn")
    pytest(session, "packages/ilit-pytorch/tests")


@session
def tensorflow(session: nox.Session) -> None:
    """ilit-tensorflow with tensorflow-cpu 2.21.0 and the LiteRT interpreter."""
    session.install(*TENSORFLOW)
    session.install(CORE, METRICS, "./packages/ilit-tensorflow[tensorflow]", "pytest", "scikit-learn")
    pytest(session, "packages/ilit-tensorflow/tests")


@session
def mxnet(session: nox.Session) -> None:
    """ilit-mxnet with MXNet 1.9.1, which needs numpy 1.23.5 (it breaks on numpy >= 1.24)."""
    session.install(*MXNET)
    # the pins again, so nothing resolved beside them lifts numpy past 1.23.5; scikit-learn 1.3 is the last
    # line built for numpy 1.23 (the tests' digits data)
    session.install(CORE, METRICS, "./packages/ilit-mxnet[mxnet,kl]", "pytest", "scikit-learn<1.4", *MXNET)
    session.run("python", "-c", "import numpy, mxnet; assert numpy.__version__ == '1.23.5', numpy.__version__")
    pytest(session, "packages/ilit-mxnet/tests")


@session
def demo(session: nox.Session) -> None:
    """The main job: train a small CNN on scikit-learn's digits, tune it to INT8 with ilit, print the results and
    write the run's report (HTML with charts: ilit-core[report] brings matplotlib)."""
    session.install(TORCH)
    session.install(f"{CORE}[report]", METRICS, "./packages/ilit-pytorch[torch,pt2e]", "scikit-learn")
    session.run("python", "examples/pytorch_digits_demo.py", *session.posargs)


@session
def tensorflow_demo(session: nox.Session) -> None:
    """The demo with TensorFlow: a Keras CNN on digits tuned to TFLite INT8, the same result table and a report."""
    session.install(*TENSORFLOW)
    session.install(f"{CORE}[report]", METRICS, "./packages/ilit-tensorflow[tensorflow]", "scikit-learn")
    session.run("python", "examples/tensorflow_digits_demo.py", *session.posargs)


@session
def mxnet_demo(session: nox.Session) -> None:
    """The demo with MXNet: a Gluon CNN on digits tuned to oneDNN INT8, the same result table and a report."""
    session.install(*MXNET)
    session.install(f"{CORE}[report]", METRICS, "./packages/ilit-mxnet[mxnet]", "scikit-learn<1.4", *MXNET)
    session.run("python", "-c", "import numpy, mxnet; assert numpy.__version__ == '1.23.5', numpy.__version__")
    session.run("python", "examples/mxnet_digits_demo.py", *session.posargs)


@session
def detection(session: nox.Session) -> None:
    """A small detector trained on canvases of scikit-learn digits, tuned to INT8 in both usages (COCO mAP)."""
    session.install(TORCH)
    session.install(CORE, f"{METRICS}[coco]", "./packages/ilit-pytorch[torch,pt2e]", "scikit-learn")
    session.run("python", "examples/pytorch_detection_demo.py", *session.posargs)


@session
def tensorflow_detection(session: nox.Session) -> None:
    """The digits detector in Keras, tuned to full-integer TFLite in both usages (COCO mAP)."""
    session.install(*TENSORFLOW)
    session.install(CORE, f"{METRICS}[coco]", "./packages/ilit-tensorflow[tensorflow]", "scikit-learn")
    session.run("python", "examples/tensorflow_detection_demo.py", *session.posargs)
