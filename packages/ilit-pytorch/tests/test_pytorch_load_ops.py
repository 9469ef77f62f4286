"""ilit.load and ilit.list_ops with the PyTorch adaptor."""

import json

import pytest
import torch

from conftest import UnscriptableNet, make_adaptor, uniform_cfg

import ilit
from ilit_pytorch.serialize import META_FILE


def test_ilit_load_reads_what_the_pytorch_adaptor_saved(trained_cnn, digits, tmp_path):
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, trained_cnn, fallback=["fc2"]), trained_cnn, digits[0])
    adaptor.save(q, str(tmp_path / "q"))
    assert json.loads((tmp_path / "q" / META_FILE).read_text())["adaptor"] == "pytorch"
    with pytest.raises(ValueError, match="pass the FP32 model"):  # data only: rebuilt from the FP32 model
        ilit.load(str(tmp_path / "q"))
    loaded = ilit.load(str(tmp_path / "q"), model=trained_cnn)
    x = digits[1][0][0]
    assert torch.equal(loaded(x), q(x))


def test_ilit_load_passes_the_fp32_model_on_for_a_weights_only_save(tmp_path):
    torch.manual_seed(0)
    fp32 = UnscriptableNet().eval()
    make_adaptor().save(fp32, str(tmp_path / "w"))  # an FP32 model: its weights, loaded into the model passed
    with pytest.raises(ValueError, match="pass the FP32 model"):
        ilit.load(str(tmp_path / "w"))
    torch.manual_seed(1)
    fresh = UnscriptableNet().eval()
    loaded = ilit.load(str(tmp_path / "w"), model=fresh)
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), fp32(x)) and not torch.equal(fresh(x), fp32(x))


def test_list_ops_gives_the_names_and_types_tuning_ops_takes(trained_cnn):
    ops = ilit.list_ops(trained_cnn)
    assert ops == [(str(n), str(t)) for n, t in make_adaptor().query_fw_capability(trained_cnn)["op_wise"]]
    assert [n for n, _t in ops] == ["features.0", "features.3", "features.7", "fc1", "fc2"]
    assert dict(ops)["fc2"] == "Linear" and ilit.list_ops(trained_cnn, framework="pytorch") == ops
    qat = ilit.list_ops(trained_cnn, config={"quantization": {"approach": "quant_aware_training"}})
    assert ("features.0", "ConvBnReLU2d") in qat  # batch-norm kept for training: the approach changes the types
    with pytest.raises(ilit.ConfigError, match="framework.name"):
        ilit.list_ops(torch.zeros(2))
