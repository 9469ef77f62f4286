"""Built-in strategies; each is registered in the ``ilit.strategies`` entry-point group.

``FallbackSearch`` is the fp32-fallback search they share (a third-party strategy can reuse it).
``bayesian`` imports scikit-learn only when it runs (``pip install 'ilit-core[bayesian]'``).
"""

from .basic import BasicStrategy
from .bayesian import BayesianStrategy
from .fallback import FallbackSearch, Ranking
from .mse import MSEStrategy

__all__ = ["BasicStrategy", "BayesianStrategy", "MSEStrategy", "FallbackSearch", "Ranking"]
