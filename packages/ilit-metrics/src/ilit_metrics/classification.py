"""Classification metrics: ``topk``, ``accuracy``, ``f1`` and ``loss`` (cross-entropy).

All of them keep running counts or sums, never the predictions, so their memory does not grow
with the dataset. Class ids are integers >= 0; labels may also be one-hot rows.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

import numpy as np

from ilit import Metric

from ._checks import class_ids, describe, label_ids, no_data, numeric, predicted_ids, same_length

__all__ = ["Topk", "Accuracy", "F1", "Loss"]


def _positive_int(metric: str, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{metric}: {what} must be an integer >= 1; got {describe(value)}")
    return int(value)


class Topk(Metric):
    """Top-k accuracy: the fraction of samples whose label is among the k highest-scored classes.

    ``preds`` are scores (any monotone scale: logits, probabilities) of shape (N, C), or, for
    ``k == 1`` only, predicted class ids of shape (N,). ``labels`` are class ids (N,) or one-hot
    (N, C). Tie rule: a stable ranking, so among equal scores the LOWER class id ranks first; with
    ``k == 1`` a sample is a hit exactly when ``numpy.argmax`` (the first maximum) is its label, which
    is what users compute by hand. INT8 logits tie often, so this matters. Without ties it equals
    ``sklearn.metrics.top_k_accuracy_score(labels, preds, k=k, labels=range(C))`` (whose tie rule is the
    opposite: the higher class id first). k may equal C (every sample is then a hit) but not exceed
    it. Keeps two counts.

    YAML: ``metric: {topk: 5}``.
    """

    name = "topk"
    higher_is_better = True

    def __init__(self, k: int = 1) -> None:
        self.k = _positive_int(self.name, "k", k)
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, preds: Any, labels: Any) -> None:
        p = numeric(self.name, "preds", preds, allow_inf=True)
        if p.ndim == 2:
            n, c = p.shape
            if self.k > c:
                raise ValueError(f"topk: k={self.k} is larger than the class count: the preds hold scores for {c} "
                                 f"classes (shape {p.shape}); use k <= {c}")
            y = label_ids(self.name, labels, n_classes=c)
            same_length(self.name, n, len(y))
            if n == 0:
                return
            rows = np.arange(n)
            s_true = p[rows, y][:, None]
            # classes ranked ahead of the label in a stable ranking: higher score, or equal score and lower class id
            ahead = (p > s_true) | ((p == s_true) & (np.arange(c)[None, :] < y[:, None]))
            hits = int(np.count_nonzero(ahead.sum(axis=1) < self.k))
        elif p.ndim == 1:
            if self.k != 1:
                raise ValueError(f"topk: k={self.k} needs scores of shape (N, C); got preds of shape {p.shape}, "
                                 f"which are class ids and only allow k=1")
            ids = class_ids(self.name, "preds", p)
            y = label_ids(self.name, labels)
            same_length(self.name, len(ids), len(y))
            n = len(ids)
            hits = int(np.count_nonzero(ids == y))
        else:
            raise ValueError(f"topk: preds must be scores of shape (N, C) or class ids of shape (N,); "
                             f"got {describe(p)}")
        self.correct += hits
        self.total += n

    def result(self) -> float:
        if not self.total:
            raise no_data(self.name)
        return self.correct / self.total


class Accuracy(Metric):
    """Classification accuracy: the fraction of samples whose predicted class equals the label.

    ``preds`` are class ids (N,) or scores (N, C), reduced by argmax (the first maximum, as
    ``numpy.argmax``: the lower class id wins a tie); ``labels`` are class ids (N,) or one-hot (N, C).
    Equal to ``sklearn.metrics.accuracy_score(labels, argmax(preds))`` and to ``topk: 1``, also on
    tied scores. Keeps two counts.

    YAML: ``metric: accuracy``.
    """

    name = "accuracy"
    higher_is_better = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, preds: Any, labels: Any) -> None:
        ids, n_classes = predicted_ids(self.name, preds)
        y = label_ids(self.name, labels, n_classes=n_classes)
        same_length(self.name, len(ids), len(y))
        self.correct += int(np.count_nonzero(ids == y))
        self.total += len(ids)

    def result(self) -> float:
        if not self.total:
            raise no_data(self.name)
        return self.correct / self.total


class F1(Metric):
    """Classification F1 score, equal to ``sklearn.metrics.f1_score(labels, argmax(preds), average=...)``.

    ``average``:
      - ``binary`` (scikit-learn's default): the F1 of class ``pos_label``; the labels and preds
        together may hold at most two classes;
      - ``macro``: the unweighted mean of the per-class F1 over the classes seen in labels or preds;
      - ``micro``: F1 of the pooled counts (equal to accuracy for single-label data);
      - ``weighted``: the per-class F1 averaged with the classes' label counts as weights.
    A class with no true and no predicted sample scores 0 (scikit-learn's ``zero_division``
    default). ``preds`` and ``labels`` are as for ``accuracy`` (scores reduced by the first maximum,
    so the lower class id wins a tie). Keeps three counts per class.

    YAML: ``metric: f1`` or ``metric: {f1: {average: macro}}``.
    """

    name = "f1"
    higher_is_better = True
    AVERAGES = ("binary", "micro", "macro", "weighted")

    def __init__(self, average: str = "binary", pos_label: int = 1) -> None:
        if average not in self.AVERAGES:
            raise ValueError(f"f1: average must be one of {', '.join(self.AVERAGES)}; got {describe(average)}")
        if isinstance(pos_label, bool) or not isinstance(pos_label, (int, np.integer)) or pos_label < 0:
            raise ValueError(f"f1: pos_label must be a class id (an integer >= 0); got {describe(pos_label)}")
        self.average = average
        self.pos_label = int(pos_label)
        self.reset()

    def reset(self) -> None:
        self._counts: Dict[int, List[int]] = {}  # class id -> [true positives, predicted, true]

    def update(self, preds: Any, labels: Any) -> None:
        ids, n_classes = predicted_ids(self.name, preds)
        y = label_ids(self.name, labels, n_classes=n_classes)
        same_length(self.name, len(ids), len(y))
        n = len(y)
        if n == 0:
            return
        classes, inv = np.unique(np.concatenate([y, ids]), return_inverse=True)
        inv = inv.reshape(-1)
        m = len(classes)
        true = np.bincount(inv[:n], minlength=m)
        pred = np.bincount(inv[n:], minlength=m)
        tp = np.bincount(inv[:n][y == ids], minlength=m)
        for c, a, b, t in zip(classes.tolist(), tp.tolist(), pred.tolist(), true.tolist()):
            cnt = self._counts.setdefault(c, [0, 0, 0])
            cnt[0] += a
            cnt[1] += b
            cnt[2] += t

    def result(self) -> float:
        if not self._counts:
            raise no_data(self.name)
        classes = sorted(self._counts)
        if self.average == "binary":
            if len(classes) > 2:
                shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
                raise ValueError(f"f1: average='binary' needs at most 2 classes, but the labels and preds hold "
                                 f"{len(classes)} ({shown}); use {{f1: {{average: macro}}}} (or micro, weighted)")
            if len(classes) == 2 and self.pos_label not in classes:
                raise ValueError(f"f1: pos_label={self.pos_label} is not one of the 2 classes seen ({classes[0]}, "
                                 f"{classes[1]}); set pos_label to the positive class")
            tp, pred, true = self._counts.get(self.pos_label, (0, 0, 0))
            return 2.0 * tp / (true + pred) if true + pred else 0.0
        counts = np.array([self._counts[c] for c in classes], dtype=np.int64)
        tps, preds, trues = counts[:, 0], counts[:, 1], counts[:, 2]
        if self.average == "micro":
            return float(2.0 * tps.sum() / (trues.sum() + preds.sum()))
        f1 = 2.0 * tps / (trues + preds).astype(np.float64)  # every class seen has true + pred > 0
        if self.average == "macro":
            return float(np.mean(f1))
        return float(np.average(f1, weights=trues))


class Loss(Metric):
    """Cross-entropy (log loss) of predicted class probabilities against the labels; lower is better.

    The mean over samples of ``-log(p[label])``, with p clipped to ``[eps, 1 - eps]`` (eps: the
    machine epsilon of the preds' float dtype), which is what ``sklearn.metrics.log_loss(labels,
    preds, labels=range(C))`` computes (in float64 here, so float32 preds agree to float32 precision).

    ``preds``: probabilities (N, C) whose rows sum to 1, or for two classes the probability of
    class 1 as (N,) or (N, 1). With ``from_logits=True`` they are raw scores instead, turned into
    probabilities by a (numerically stable) softmax over C, or a sigmoid for (N,) / (N, 1), so the
    result is ``log_loss(labels, softmax(preds))``. ``labels``: class ids (N,) or one-hot (N, C).
    Keeps a sum and a count.

    YAML: ``metric: loss`` or ``metric: {loss: {from_logits: true}}``.
    """

    name = "loss"
    higher_is_better = False

    def __init__(self, from_logits: bool = False) -> None:
        if not isinstance(from_logits, (bool, np.bool_)):
            raise ValueError(f"loss: from_logits must be true or false; got {describe(from_logits)}")
        self.from_logits = bool(from_logits)
        self.reset()

    def reset(self) -> None:
        self._sum = 0.0
        self.total = 0

    def _check_probabilities(self, p: np.ndarray, eps: float) -> None:
        if p.size and (p.min() < 0 or p.max() > 1):
            raise ValueError(f"loss: preds must be probabilities in [0, 1]; got values in [{p.min()}, {p.max()}]. "
                             f"For raw scores (logits) use {{loss: {{from_logits: true}}}}")
        if p.ndim == 2:
            sums = p.sum(axis=1, dtype=np.float64)
            bad = ~np.isclose(sums, 1.0, rtol=math.sqrt(eps), atol=0.0)
            if bad.any():
                raise ValueError(f"loss: each row of (N, C) preds must be probabilities summing to 1; got a row "
                                 f"summing to {sums[bad][0]!r}. For raw scores (logits) use "
                                 f"{{loss: {{from_logits: true}}}}")

    def update(self, preds: Any, labels: Any) -> None:
        p = numeric(self.name, "preds", preds, allow_inf=self.from_logits)
        eps = float(np.finfo(p.dtype if p.dtype.kind == "f" else np.float64).eps)
        log_lo, log_hi = math.log(eps), math.log(1 - eps)
        if p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1):
            q = p.reshape(-1).astype(np.float64)
            y = label_ids(self.name, labels, n_classes=2)
            same_length(self.name, len(q), len(y))
            if self.from_logits:
                z = np.where(y == 1, q, -q)                     # log sigmoid(z) = -log(1 + e^-z)
                log_p = -np.logaddexp(0.0, -z)
                losses = -np.clip(log_p, log_lo, log_hi)
            else:
                self._check_probabilities(q, eps)
                p_true = np.where(y == 1, q, 1.0 - q)
                losses = -np.log(np.clip(p_true, eps, 1 - eps))
        elif p.ndim == 2:
            n, c = p.shape
            y = label_ids(self.name, labels, n_classes=c)
            same_length(self.name, n, len(y))
            x = p.astype(np.float64)
            rows = np.arange(n)
            if self.from_logits:
                if n and np.isinf(x.max(axis=1)).any():
                    raise ValueError("loss: every row of logits needs a finite maximum; got a row whose "
                                     "largest value is infinite")
                m = x.max(axis=1, keepdims=True) if n else np.zeros((0, 1))
                lse = np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]
                log_p = x[rows, y] - lse
                losses = -np.clip(log_p, log_lo, log_hi)
            else:
                self._check_probabilities(p, eps)
                losses = -np.log(np.clip(x[rows, y], eps, 1 - eps))
        else:
            raise ValueError(f"loss: preds must be probabilities of shape (N, C), or (N,) for the positive class of a "
                             f"binary problem; got {describe(p)}")
        self._sum += float(losses.sum())
        self.total += len(losses)

    def result(self) -> float:
        if not self.total:
            raise no_data(self.name)
        return self._sum / self.total
