"""ilit.load dispatches on the adaptor named in a saved directory's metadata; ilit.list_ops asks the adaptor."""

import json
import os
import pickle

import numpy as np
import pytest

import ilit
from ilit.loading import saved_adaptor
from ilit.space import TuningSpace
from ilit_toy import ToyAdaptor, ToyModel


def _quantized(model, data):
    adaptor = ToyAdaptor(ilit.load_config({}))
    space = TuningSpace.build(adaptor.query_fw_capability(model), adaptor.config)
    return adaptor, adaptor.quantize(space.with_fallback(space.model_wise_configs()[0], ["dense1"]), model, data)


def test_load_reads_what_the_adaptor_saved(easy_toy, tmp_path):
    model, data = easy_toy
    adaptor, q = _quantized(model, data)
    adaptor.save(q, str(tmp_path / "q"))
    assert json.loads((tmp_path / "q" / "ilit_toy.json").read_text()) == {"adaptor": "toy"}
    assert saved_adaptor(str(tmp_path / "q")) == "toy"
    loaded = ilit.load(str(tmp_path / "q"))
    assert isinstance(loaded, ToyModel)
    assert [layer.quantized for layer in loaded.layers] == [True, False, True, True]
    x = data[0][0]
    np.testing.assert_array_equal(loaded(x), q(x))


def test_load_reads_a_tuning_runs_best_model(easy_toy, conf):
    model, data = easy_toy
    tuner = ilit.Tuner(conf())
    q = tuner.tune(model, data, eval_dataloader=data)
    best = ilit.load(os.path.join(conf()["tuning"]["workspace"]["path"], "best_model"))
    np.testing.assert_array_equal(best(data[1][0]), q(data[1][0]))


def test_load_explains_what_it_cannot_read(easy_toy, tmp_path):
    with pytest.raises(FileNotFoundError, match="no directory"):
        ilit.load(str(tmp_path / "missing"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="takes the directory an adaptor's save wrote"):
        ilit.load(str(tmp_path / "file.bin"))
    model, data = easy_toy
    adaptor, q = _quantized(model, data)
    adaptor.save(q, str(tmp_path / "old"))
    os.remove(tmp_path / "old" / "ilit_toy.json")  # as an older ilit wrote it
    with pytest.raises(ilit.ModelFileError, match="holds no ilit metadata naming the adaptor"):
        ilit.load(str(tmp_path / "old"))
    (tmp_path / "old" / "ilit_toy.json").write_text(json.dumps({"adaptor": "nosuch"}))
    with pytest.raises(ilit.PluginNotFoundError, match="saved by the nosuch adaptor, which is not installed"):
        ilit.load(str(tmp_path / "old"))


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_a_pickle_posing_as_metadata_is_not_run(easy_toy, tmp_path):
    model, data = easy_toy
    adaptor, q = _quantized(model, data)
    adaptor.save(q, str(tmp_path / "q"))
    marker = tmp_path / "marker"
    os.remove(tmp_path / "q" / "ilit_toy.json")
    (tmp_path / "q" / "ilit_toy.json").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ilit.ModelFileError):
        ilit.load(str(tmp_path / "q"))
    assert not marker.exists()


def test_list_ops_names_every_quantizable_op_with_its_type(easy_toy):
    model, _data = easy_toy
    want = [(layer.name, "Dense") for layer in model.layers]
    assert ilit.list_ops(model) == want  # the adaptor found as tune finds it
    assert ilit.list_ops(model, framework="toy") == want
    assert ilit.list_ops(model, config={"quantization": {"approach": "post_training_dynamic_quant"}}) == want
    with pytest.raises(ilit.PluginNotFoundError, match="no adaptor 'nosuch'"):
        ilit.list_ops(model, framework="nosuch")
    with pytest.raises(ilit.ConfigError, match="framework.name"):
        ilit.list_ops(object())
