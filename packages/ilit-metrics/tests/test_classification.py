"""topk, accuracy, f1 and loss against scikit-learn, on hypothesis-drawn data fed in random batches."""

import warnings

import numpy as np
import pytest
from helpers import close, feed, split
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import accuracy_score, f1_score, log_loss, top_k_accuracy_score

from ilit_metrics import F1, Accuracy, Loss, Topk

CUTS = st.lists(st.integers(0, 60), max_size=4)


@st.composite
def scored(draw, min_classes=2, max_classes=8, max_n=60):
    """Scores (N, C) -- tie-heavy small integers half the time -- and class-id labels."""
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(min_classes, max_classes))
    if draw(st.booleans()):
        elements = st.integers(-2, 2).map(float)
    else:
        elements = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
    scores = draw(arrays(np.float64, (n, c), elements=elements))
    labels = draw(arrays(np.int64, n, elements=st.integers(0, c - 1)))
    return scores, labels


def sk_topk(labels, scores, k):
    """scikit-learn's top-k accuracy; two-class scores get a strictly lowest dummy column, which ranks
    last and so changes nothing, because scikit-learn reads (N, 2) scores with binary labels differently.
    scikit-learn ranks the higher class id first among equal scores."""
    c = scores.shape[1]
    if c == 2:
        scores = np.c_[scores, scores.min() - 1.0 * np.ones(len(scores))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k == C "is meaningless"
        return top_k_accuracy_score(labels, scores, k=k, labels=np.arange(scores.shape[1]))


def stable_topk(labels, scores, k):
    """By hand: rank each row by descending score with a stable sort (the lower class id first among
    equal scores) and count the rows whose label is among the first k."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean((order == labels[:, None]).any(axis=1)))


def mirrored_sk_topk(labels, scores, k):
    """scikit-learn's top-k on the classes numbered backwards: its 'higher id first' tie rule then ranks
    the lower original id first, so this is ilit's rule computed by the reference implementation."""
    c = scores.shape[1]
    return sk_topk(c - 1 - labels, scores[:, ::-1], k)


# ---------------------------------------------------------------------------------------------- topk
@given(scored(), st.data(), CUTS)
def test_topk_equals_a_stable_ranking_by_hand_and_mirrored_sklearn(data, draw, cuts):
    scores, labels = data
    k = draw.draw(st.integers(1, scores.shape[1]))
    got = feed(Topk(k), split(cuts, scores, labels))
    assert got == stable_topk(labels, scores, k)
    assert got == mirrored_sk_topk(labels, scores, k)


@given(scored(), CUTS)
def test_topk_1_equals_argmax_on_tied_scores(data, cuts):
    scores, labels = data
    by_hand = float(np.mean(scores.argmax(1) == labels))  # numpy's argmax: the first maximum
    assert feed(Topk(1), split(cuts, scores, labels)) == by_hand
    assert feed(Topk(1), split(cuts, scores, labels)) == feed(Accuracy(), split(cuts, scores, labels))


def test_topk_tie_rule_examples():
    tied = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 1.0, 1.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    # k=1: the first maximum wins (class 1 in row 0, class 0 in rows 1 and 2)
    assert [feed(Topk(1), [(tied[i:i + 1], np.array([y]))]) for i, y in [(0, 1), (0, 2), (1, 0), (2, 0), (2, 3)]] \
        == [1.0, 0.0, 1.0, 1.0, 0.0]
    # k=2: row 1 ranks 0, 1, 2, 3 (class 1 before class 2); row 2 ranks 0, 1, 2, 3
    assert [feed(Topk(2), [(tied[i:i + 1], np.array([y]))]) for i, y in [(1, 1), (1, 2), (2, 1), (2, 2)]] \
        == [1.0, 0.0, 1.0, 0.0]
    # scikit-learn breaks these ties the other way round (the higher class id first)
    assert sk_topk(np.array([1]), tied[:1], 1) == 0.0 and sk_topk(np.array([2]), tied[:1], 1) == 1.0


@given(scored(min_classes=3), CUTS)
def test_topk_one_hot_labels_and_class_ids(data, cuts):
    scores, labels = data
    one_hot = np.eye(scores.shape[1])[labels]
    assert feed(Topk(1), split(cuts, scores, one_hot)) == stable_topk(labels, scores, 1)
    # class-id preds (k = 1) are compared as they are
    ids = scores.argmax(1)
    assert feed(Topk(1), split(cuts, ids, labels)) == accuracy_score(labels, ids)


def test_topk_seeded_large():
    # continuous scores: no ties, so scikit-learn's tie rule does not matter and it is the reference as it is
    rng = np.random.default_rng(1978)
    scores = rng.normal(size=(5000, 100)).astype(np.float32)
    labels = rng.integers(0, 100, 5000)
    for k in (1, 5, 10):
        m = Topk(k)
        for i in range(0, 5000, 128):
            m.update(scores[i:i + 128], labels[i:i + 128])
        assert m.result() == top_k_accuracy_score(labels, scores, k=k, labels=np.arange(100))


def test_topk_keeps_counts_not_predictions():
    m = Topk(5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        m.update(rng.normal(size=(64, 10)), rng.integers(0, 10, 64))
    state = {k: v for k, v in vars(m).items()}
    assert set(state) == {"k", "correct", "total"} and all(isinstance(v, int) for v in state.values())


@pytest.mark.parametrize("preds, labels, message", [
    (np.zeros((4, 3)), np.zeros(3, int), "same length N; got 4 preds and 3 labels"),
    (np.zeros((4, 3)), np.array([0, 1, 2, 3]), r"class ids in \[0, 3\)"),
    (np.array([[0.1, np.nan, 0.2]]), np.array([0]), "NaN"),
    (np.zeros((2, 2, 2)), np.zeros(2, int), r"shape \(N, C\).*got an array of shape \(2, 2, 2\)"),
    (np.zeros((2, 3)), np.array([[1, 0], [0, 1]]), "one column per class"),
    (np.zeros((2, 3)), np.array([[1, 1, 0], [0, 1, 0]]), "one-hot"),
    (np.zeros((2, 3)), np.array([0.5, 1]), "integer class ids"),
    (np.array(["a", "b"]), np.array([0, 1]), "numeric array"),
])
def test_topk_bad_input(preds, labels, message):
    m = Topk(1)
    with pytest.raises(ValueError, match=f"^topk: .*{message}"):
        m.update(preds, labels)
    assert m.total == 0  # a rejected batch changes nothing


def test_topk_bad_k():
    with pytest.raises(ValueError, match=r"topk: k=5 is larger than the class count.*3 classes"):
        Topk(5).update(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"topk: k=2 needs scores of shape \(N, C\)"):
        Topk(2).update(np.array([0, 1]), np.array([0, 1]))
    for bad in (0, -1, 1.5, "5", True):
        with pytest.raises(ValueError, match="topk: k must be an integer >= 1"):
            Topk(bad)


def test_no_data():
    for m in (Topk(), Accuracy(), F1(), Loss()):
        with pytest.raises(ValueError, match=f"^{m.name}: result\\(\\) needs data"):
            m.result()


# ------------------------------------------------------------------------------------------ accuracy
@given(scored(), CUTS)
def test_accuracy_equals_sklearn(data, cuts):
    scores, labels = data
    assert feed(Accuracy(), split(cuts, scores, labels)) == accuracy_score(labels, scores.argmax(1))
    ids = scores.argmax(1)
    assert feed(Accuracy(), split(cuts, ids, labels)) == accuracy_score(labels, ids)
    one_hot = np.eye(scores.shape[1])[labels]
    assert feed(Accuracy(), split(cuts, scores, one_hot)) == accuracy_score(labels, ids)


def test_accuracy_bad_input():
    with pytest.raises(ValueError, match=r"accuracy: preds must be integer class ids.*\(N, C\), C >= 2"):
        Accuracy().update(np.array([0.2, 0.9]), np.array([0, 1]))
    with pytest.raises(ValueError, match="accuracy: preds and labels must have the same length"):
        Accuracy().update(np.array([0, 1, 1]), np.array([0, 1]))


# ------------------------------------------------------------------------------------------------ f1
@given(scored(max_classes=6), st.sampled_from(["micro", "macro", "weighted"]), CUTS)
def test_f1_multiclass_equals_sklearn(data, average, cuts):
    scores, labels = data
    ids = scores.argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = f1_score(labels, ids, average=average)
    assert close(feed(F1(average=average), split(cuts, scores, labels)), want)
    assert close(feed(F1(average=average), split(cuts, ids, labels)), want)


@given(arrays(np.int64, st.integers(1, 60), elements=st.integers(0, 1)),
       arrays(np.int64, 60, elements=st.integers(0, 1)), st.integers(0, 1), CUTS)
def test_f1_binary_equals_sklearn(labels, preds, pos_label, cuts):
    preds = preds[:len(labels)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero_division
        want = f1_score(labels, preds, pos_label=pos_label)
    assert close(feed(F1(pos_label=pos_label), split(cuts, preds, labels)), want)


def test_f1_seeded_large():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 20, 10_000)
    scores = rng.normal(size=(10_000, 20)) + 2.0 * np.eye(20)[labels]
    for average in ("micro", "macro", "weighted"):
        m = F1(average=average)
        for i in range(0, 10_000, 256):
            m.update(scores[i:i + 256], labels[i:i + 256])
        assert close(m.result(), f1_score(labels, scores.argmax(1), average=average))


def test_f1_errors():
    m = F1()
    m.update(np.array([0, 1, 2]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"f1: average='binary' needs at most 2 classes.*\{f1: \{average: macro\}\}"):
        m.result()
    m = F1()
    m.update(np.array([0, 2]), np.array([0, 2]))
    with pytest.raises(ValueError, match="f1: pos_label=1 is not one of the 2 classes seen"):
        m.result()
    with pytest.raises(ValueError, match="f1: average must be one of binary, micro, macro, weighted"):
        F1(average="samples")


# ---------------------------------------------------------------------------------------------- loss
@st.composite
def probabilities(draw, max_classes=6):
    n = draw(st.integers(1, 50))
    c = draw(st.integers(2, max_classes))
    raw = draw(arrays(np.float64, (n, c), elements=st.sampled_from([0.0, 1e-20, 1e-3, 0.3, 1.0, 7.0])
                      | st.floats(0, 10)))
    raw[raw.sum(1) == 0, 0] = 1.0
    probs = raw / raw.sum(1, keepdims=True)  # exact zeros and ones exercise the clipping
    labels = draw(arrays(np.int64, n, elements=st.integers(0, c - 1)))
    return probs, labels


@given(probabilities(), CUTS)
def test_loss_equals_sklearn_log_loss(data, cuts):
    probs, labels = data
    want = log_loss(labels, probs, labels=np.arange(probs.shape[1]))
    assert close(feed(Loss(), split(cuts, probs, labels)), want)
    one_hot = np.eye(probs.shape[1])[labels]
    assert close(feed(Loss(), split(cuts, probs, one_hot)), want)


@given(arrays(np.float64, st.integers(1, 50), elements=st.sampled_from([0.0, 1.0]) | st.floats(0, 1)),
       arrays(np.int64, 50, elements=st.integers(0, 1)), CUTS)
def test_loss_binary_probability_of_class_1(p1, labels, cuts):
    labels = labels[:len(p1)]
    want = log_loss(labels, p1, labels=[0, 1])
    assert close(feed(Loss(), split(cuts, p1, labels)), want)
    assert close(feed(Loss(), split(cuts, p1[:, None], labels)), want)


@given(arrays(np.float64, st.tuples(st.integers(1, 50), st.integers(2, 6)), elements=st.floats(-4, 4)),
       st.data(), CUTS)
def test_loss_from_logits_equals_log_loss_of_softmax(logits, draw, cuts):
    labels = draw.draw(arrays(np.int64, len(logits), elements=st.integers(0, logits.shape[1] - 1)))
    e = np.exp(logits - logits.max(1, keepdims=True))
    want = log_loss(labels, e / e.sum(1, keepdims=True), labels=np.arange(logits.shape[1]))
    # log-softmax is more accurate than log(softmax) where p is near 1, hence a looser (still tight) tolerance
    assert close(feed(Loss(from_logits=True), split(cuts, logits, labels)), want, rel=1e-10, abs_=1e-12)


def test_loss_from_logits_binary_and_extremes():
    x = np.array([-800.0, -3.0, 0.0, 2.5, 900.0])
    y = np.array([1, 0, 1, 1, 0])
    p1 = 1.0 / (1.0 + np.exp(-np.clip(x, -700, 700)))
    want = log_loss(y, p1, labels=[0, 1])  # both extremes are clipped at eps
    m = Loss(from_logits=True)
    m.update(x, y)
    assert close(m.result(), want, rel=1e-10)
    m = Loss(from_logits=True)
    m.update(np.array([[-1e4, 1e4, 0.0], [-np.inf, 0.0, 1.0]]), np.array([0, 0]))
    assert close(m.result(), -np.log(np.finfo(np.float64).eps))


def test_loss_float32_uses_float32_eps_like_sklearn():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(5), 400).astype(np.float32)
    p[:50, 0] = 0.0
    p /= p.sum(1, keepdims=True)
    y = np.r_[np.zeros(50, int), rng.integers(0, 5, 350)]
    m = Loss()
    m.update(p, y)
    assert close(m.result(), log_loss(y, p, labels=np.arange(5)), rel=1e-6)
    assert m.higher_is_better is False


def test_loss_bad_input():
    with pytest.raises(ValueError, match=r"loss: preds must be probabilities in \[0, 1\].*from_logits: true"):
        Loss().update(np.array([[2.0, -1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="loss: each row of .* summing to 1"):
        Loss().update(np.array([[0.5, 0.4]]), np.array([0]))
    with pytest.raises(ValueError, match="loss: .*NaN"):
        Loss(from_logits=True).update(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match=r"loss: labels must be class ids in \[0, 2\)"):
        Loss().update(np.array([0.2, 0.7]), np.array([0, 2]))
    with pytest.raises(ValueError, match="loss: from_logits must be true or false"):
        Loss(from_logits="yes")
