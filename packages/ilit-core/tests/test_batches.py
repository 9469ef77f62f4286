"""The shared batch vocabulary adaptors use: (inputs, labels) splitting and inspect_tensor's batch choice."""

import numpy as np
import pytest

import ilit
from ilit.batches import batch_inputs, selected_batches, split_batch


@pytest.mark.parametrize("batch, inputs, labels", [
    (("x", "y"), "x", "y"),
    (["x", "y"], "x", "y"),
    ((("a", "b"), "y"), ("a", "b"), "y"),  # positional inputs, labels
    (({"ids": 1}, "y"), {"ids": 1}, "y"),  # keyword inputs, labels
    ("x", "x", None),  # inputs alone
    (("a", "b", "c"), ("a", "b", "c"), None),  # not a pair: all of it is inputs
    ({"ids": 1, "mask": 2}, {"ids": 1, "mask": 2}, None),
])
def test_split_batch_takes_a_pair_as_inputs_and_labels_and_anything_else_as_inputs(batch, inputs, labels):
    assert split_batch(batch) == (inputs, labels)
    assert batch_inputs(batch) == inputs


def test_split_batch_keeps_arrays_as_they_are():
    x, y = np.ones((4, 3)), np.arange(4)
    got_x, got_y = split_batch((x, y))
    assert got_x is x and got_y is y
    assert batch_inputs(x) is x  # a bare 2-row array is inputs, not a pair


class CountingLoader:
    """Yields batches 0..n-1 and counts how many it was asked for."""

    def __init__(self, n: int) -> None:
        self.n, self.read = n, 0

    def __iter__(self):
        for i in range(self.n):
            self.read += 1
            yield (f"x{i}", i)


def test_selected_batches_yields_the_wanted_indices_in_loader_order_once_each():
    loader = CountingLoader(10)
    got = list(selected_batches(loader, [7, 2, 2, 5]))
    assert got == [(2, ("x2", 2)), (5, ("x5", 5)), (7, ("x7", 7))]
    assert loader.read == 8  # stopped at the last index wanted, batch 7


def test_selected_batches_skips_indices_past_the_end_and_reads_nothing_for_an_empty_list():
    loader = CountingLoader(3)
    assert [i for i, _ in selected_batches(loader, [1, 40])] == [1]
    assert loader.read == 3
    empty = CountingLoader(3)
    assert list(selected_batches(empty, [])) == []
    assert empty.read == 0


def test_model_file_error_carries_the_file_and_is_a_value_error():
    err = ilit.ModelFileError("/tmp/x/model.pt", "/tmp/x/model.pt is not a model ilit saved")
    assert err.file == "/tmp/x/model.pt" and str(err) == "/tmp/x/model.pt is not a model ilit saved"
    assert isinstance(err, ValueError)


def test_the_approach_names_and_tensor_fields_are_the_configs():
    from ilit import config, tune_cfg

    assert tune_cfg.APPROACHES == (tune_cfg.STATIC, tune_cfg.DYNAMIC, tune_cfg.QAT)
    assert config.load_config({"framework": {"name": "toy"}}).quantization.approach == tune_cfg.STATIC
    with pytest.raises(ilit.ConfigError, match="quantization.approach.*expected one of"):
        config.load_config({"framework": {"name": "toy"}, "quantization": {"approach": "static"}})
    assert set(config._ALLOWED) == set(tune_cfg.TENSOR_FIELDS)
