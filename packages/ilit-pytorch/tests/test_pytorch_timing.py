"""The performance objective with the real adaptor: timing runs on one thread (restored afterwards) and the INT8
and FP32 models alternate in rounds. No assertion about how fast anything is."""

import math

import pytest
import torch

from conftest import make_adaptor, uniform_cfg

from ilit.objectives import Performance


def test_timing_context_sets_the_thread_count_and_restores_it():
    adaptor = make_adaptor()
    before = torch.get_num_threads()
    assert before != 1  # conftest runs torch on 2 threads, so setting 1 is a change
    with adaptor.timing_context(1) as threads:
        assert threads == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with adaptor.timing_context(None) as threads:  # None: the user's setting, left alone
        assert threads == before and torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inference failed"):
        with adaptor.timing_context(1):
            raise RuntimeError("inference failed")
    assert torch.get_num_threads() == before


def test_performance_compare_times_int8_and_fp32_interleaved_on_one_thread(trained_cnn, digits, monkeypatch):
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, trained_cnn), trained_cnn, digits[0])
    before = torch.get_num_threads()
    seen = []
    real = adaptor.infer

    def spy(model, inputs):
        seen.append((model is q, torch.get_num_threads()))
        return real(model, inputs)

    monkeypatch.setattr(adaptor, "infer", spy)
    c = Performance(threads=1, budget_s=0.5).compare(q, trained_cnn, adaptor, digits[1][0][0])
    assert c.threads == 1 and {threads for _, threads in seen} == {1}
    assert torch.get_num_threads() == before
    assert c.rounds >= 6 and c.ratio > 0 and c.baseline > 0 and math.isfinite(c.spread)
    assert c.value == pytest.approx(c.ratio * c.baseline)
    assert c.reliable == (c.spread <= 0.05)
    # after one or two warm-up runs each (fewer once 0.5 s is spent), the models alternate block by block: the
    # warm-up switches once at least, and every round switches between its two blocks
    switches = sum(a != b for (a, _), (b, _) in zip(seen, seen[1:]))
    assert switches >= c.rounds + 1
    assert seen[0][0] is True and seen[1][0] is False  # the candidate first, then the FP32 model
