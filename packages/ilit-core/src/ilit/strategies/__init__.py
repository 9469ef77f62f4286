"""Built-in strategies; each is registered in the ``ilit.strategies`` entry-point group.

``bayesian`` imports scikit-learn only when it runs (``pip install 'ilit-core[bayesian]'``).
"""

from .basic import BasicStrategy
from .bayesian import BayesianStrategy
from .mse import MSEStrategy

__all__ = ["BasicStrategy", "BayesianStrategy", "MSEStrategy"]
