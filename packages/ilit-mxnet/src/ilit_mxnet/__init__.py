"""ilit-mxnet: the MXNet 1.9.1 adaptor for ilit, real INT8 through MXNet's oneDNN (MKLDNN) quantization.

Importing it checks numpy first (MXNet 1.9.1 breaks on numpy >= 1.24), then imports mxnet.
"""

from ._deps import check_numpy, import_mxnet

check_numpy()
import_mxnet()

from .adaptor import MXNetAdaptor  # noqa: E402
from .graph import node_precisions  # noqa: E402
from .model import ModelFileError, SymbolModel, to_symbol_model  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["MXNetAdaptor", "SymbolModel", "ModelFileError", "to_symbol_model", "node_precisions", "__version__"]
