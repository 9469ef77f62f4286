"""ilit-metrics: streaming accuracy metrics for ilit, each exact against its reference implementation.

Registered in the ``ilit.metrics`` entry-point group, so a YAML ``tuning.metric`` picks them by name:
``topk``, ``accuracy``, ``loss``, ``mae``, ``mse``, ``rmse``, ``f1``, ``squad_f1`` and ``cocomap``
(the last needs ``pip install 'ilit-metrics[coco]'``). They compute on numpy data; the adaptors
convert framework outputs before calling ``update``.
"""

from .classification import F1, Accuracy, Loss, Topk
from .coco import CocoMAP
from .regression import MAE, MSE, RMSE
from .squad import SquadF1
from .version import __version__

__all__ = ["Topk", "Accuracy", "F1", "Loss", "MAE", "MSE", "RMSE", "SquadF1", "CocoMAP", "__version__"]
