"""tune(..., postprocess=fn): usage (a) for models whose outputs the metric cannot read as they are (detectors).

The adaptor runs the model over eval_dataloader; ``postprocess`` turns each batch's outputs into the metric's
input. Checked against accuracies computed by hand from the toy model's own outputs.
"""

import numpy as np
import pytest

import ilit
from ilit_toy import ToyAdaptor


def by_hand(model, data, transform):
    """Top-1 accuracy of ``transform(outputs)`` over ``data``, computed without ilit."""
    correct = total = 0
    for x, y in data:
        correct += int((np.asarray(transform(model(x))).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def flip(outputs):
    """A post-processing that changes the metric: the argmax of the negated outputs is the argmin."""
    return -np.asarray(outputs)


def test_postprocess_feeds_the_metric(toy, conf):
    model, data = toy
    seen = []

    def postprocess(outputs):
        seen.append(outputs)
        return flip(outputs)

    tuner = ilit.Tuner(conf(tuning={"max_trials": 3}))
    tuner.tune(model, data, eval_dataloader=data, postprocess=postprocess)
    # the labels are the FP32 argmax, so the plain metric would score the baseline 1.0; the flipped one does not
    assert tuner.baseline_accuracy == pytest.approx(by_hand(model, data, flip))
    assert tuner.baseline_accuracy < 0.5
    assert by_hand(model, data, lambda o: o) == 1.0
    # once per eval batch, for the baseline and each trial that ran, with the model's numpy outputs
    ran = [t for t in tuner.history.trials if t.error is None]
    assert len(seen) == len(data) * (1 + len(ran))
    assert all(isinstance(o, np.ndarray) and o.shape == (len(x), model.layers[-1].W.shape[1])
               for o, (x, _) in zip(seen, data))
    np.testing.assert_allclose(seen[0], model(data[0][0]))


def test_postprocess_scores_every_trial(toy, conf):
    """Each trial's recorded accuracy is the post-processed metric of that trial's quantized model."""
    model, data = toy
    tuner = ilit.Tuner(conf(tuning={"max_trials": 2}))
    best = tuner.tune(model, data, eval_dataloader=data, postprocess=flip)
    adaptor = ToyAdaptor(tuner.config)
    assert tuner.history.trials and best is not None
    assert tuner.best_trial.accuracy == pytest.approx(by_hand(best, data, flip))
    for trial in tuner.history.trials:
        q = adaptor.quantize(trial.tune_cfg, model, data)
        assert trial.accuracy == pytest.approx(by_hand(q, data, flip))


def test_postprocessed_metric_delegates():
    class Mean(ilit.Metric):
        higher_is_better = False

        def __init__(self):
            self.reset()

        def reset(self):
            self.values = []

        def update(self, preds, labels):
            self.values.append(float(np.mean(preds) - np.mean(labels)))

        def result(self):
            return float(np.mean(self.values))

    inner = Mean()
    m = ilit.PostprocessedMetric(inner, lambda outputs: outputs[0] * 10)  # the first of several outputs, scaled
    assert m.higher_is_better is False
    m.update((np.array([1.0, 2.0]), np.array([100.0])), np.array([0.0]))
    assert m.result() == pytest.approx(15.0)
    m.reset()
    assert inner.values == []


def test_postprocess_with_eval_func_is_refused(toy, conf):
    model, data = toy
    with pytest.raises(ValueError, match="postprocess applies to the model outputs .* with eval_func"):
        ilit.Tuner(conf()).tune(model, data, eval_func=lambda m: 1.0, postprocess=flip)


def test_postprocess_not_callable_is_refused(toy, conf):
    model, data = toy
    with pytest.raises(ValueError, match="postprocess must be a function outputs -> metric input, got str"):
        ilit.Tuner(conf()).tune(model, data, eval_dataloader=data, postprocess="decode")


def test_postprocess_failing_on_the_baseline_stops_tune(toy, conf):
    model, data = toy

    def broken(outputs):
        raise KeyError("no such head")

    with pytest.raises(KeyError, match="no such head"):
        ilit.Tuner(conf()).tune(model, data, eval_dataloader=data, postprocess=broken)
