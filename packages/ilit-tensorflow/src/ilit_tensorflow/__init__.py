"""ilit's TensorFlow adaptor: real INT8 TFLite models tuned by ilit, run with the LiteRT interpreter.

Importing this package does not import TensorFlow; the adaptor imports it when first used.
"""

from .adaptor import QAT_MESSAGE, TensorFlowAdaptor
from .model import InvalidModelFileError, TFLiteModel
from .version import __version__

__all__ = ["TensorFlowAdaptor", "TFLiteModel", "InvalidModelFileError", "QAT_MESSAGE", "__version__"]
