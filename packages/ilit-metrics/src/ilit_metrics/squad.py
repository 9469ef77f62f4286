"""``squad_f1``: the SQuAD v1.1 token F1 and exact match, by the official v1.1 evaluation rules.

``normalize_answer``, ``f1_score``, ``exact_match_score`` and the max over ground truths are the
official ``evaluate-v1.1.py`` logic, unchanged. As there, both numbers are percentages (0 to 100),
and a question with no prediction scores 0 and counts in the total.
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ilit import Metric

from ._checks import describe, no_data

__all__ = ["SquadF1", "normalize_answer", "f1_score", "exact_match_score"]

_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official SQuAD v1.1)."""

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        return "".join(ch for ch in text if ch not in _PUNCTUATION)

    def lower(text: str) -> str:
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 between one prediction and one ground truth (official SQuAD v1.1)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """Whether the normalized prediction equals the normalized ground truth (official SQuAD v1.1)."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn: Callable[[str, str], Any], prediction: str,
                                  ground_truths: Sequence[str]) -> Any:
    """The best score of the prediction against any of the ground truths (official SQuAD v1.1)."""
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def _as_list(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


class SquadF1(Metric):
    """SQuAD v1.1 F1 (the result) and exact match (in :meth:`results`), both in percent.

    Per batch, either
      - ``preds`` ``{question_id: answer_text}`` and ``labels`` ``{question_id: [ground_truth_texts]}``:
        every labelled question counts; one missing from ``preds`` scores 0 (with a warning), and
        predictions for questions not in ``labels`` are ignored, as in the official script; or
      - ``preds`` a list of answer texts and ``labels`` a list of the same length whose items are
        lists of ground-truth texts (a single string is taken as a one-item list).
    Keeps two sums and a count.

    YAML: ``metric: squad_f1``.
    """

    name = "squad_f1"
    higher_is_better = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._f1 = 0.0
        self._exact = 0.0
        self.total = 0

    def _ground_truths(self, key: Any, value: Any) -> List[str]:
        value = _as_list(value)
        if isinstance(value, str):
            return [value]
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(t, str) for t in value):
            raise ValueError(f"squad_f1: the labels of question {key!r} must be a non-empty list of ground-truth "
                             f"answer strings; got {describe(value)}"
                             + (f" holding {type(value[0]).__name__}" if isinstance(value, (list, tuple)) and value
                                else ""))
        return list(value)

    @staticmethod
    def _answer(key: Any, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"squad_f1: the prediction for question {key!r} must be an answer string; "
                             f"got {describe(value)}")
        return value

    def update(self, preds: Any, labels: Any) -> None:
        preds, labels = _as_list(preds), _as_list(labels)
        pairs: List[Tuple[Any, Any]] = []  # (prediction or None, ground truths)
        if isinstance(preds, Mapping) and isinstance(labels, Mapping):
            missing = [k for k in labels if k not in preds]
            for key, gts in labels.items():
                truths = self._ground_truths(key, gts)
                pairs.append((self._answer(key, preds[key]) if key in preds else None, truths))
            if missing:
                warnings.warn(f"squad_f1: {len(missing)} labelled question(s) have no prediction and score 0 "
                              f"(first: {missing[0]!r})", RuntimeWarning, stacklevel=2)
        elif isinstance(preds, (list, tuple)) and isinstance(labels, (list, tuple)):
            if len(preds) != len(labels):
                raise ValueError(f"squad_f1: preds and labels must have the same length; got {len(preds)} preds and "
                                 f"{len(labels)} labels")
            for i, (pred, gts) in enumerate(zip(preds, labels)):
                pairs.append((self._answer(i, pred), self._ground_truths(i, gts)))
        else:
            raise ValueError("squad_f1: preds and labels must be {id: answer_text} and {id: [ground_truth_texts]}, "
                             "or a list of answer texts and a list of lists of ground-truth texts; got preds as "
                             f"{describe(preds)} and labels as {describe(labels)}")
        for prediction, ground_truths in pairs:  # summed in order, exactly as the official script does
            self.total += 1
            if prediction is None:
                continue
            self._exact += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
            self._f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)

    def results(self) -> Dict[str, float]:
        """``{"exact_match": ..., "f1": ...}`` in percent, as the official script prints them."""
        if not self.total:
            raise no_data(self.name)
        return {"exact_match": 100.0 * self._exact / self.total, "f1": 100.0 * self._f1 / self.total}

    def result(self) -> float:
        return self.results()["f1"]
