"""The SQuAD v1.1 evaluation rules (the official ``evaluate-v1.1.py``), restated independently as the tests'
reference: normalize by lower-casing, dropping ``string.punctuation``, replacing the articles a/an/the
(whole words) by spaces and collapsing whitespace; token F1 from the multiset overlap; exact match of the
normalized strings; the best score over a question's ground truths; an unanswered question scores 0; both
numbers in percent. ``evaluate`` takes the SQuAD json layout (articles -> paragraphs -> qas)."""

import re
import string
from collections import Counter

_ARTICLE = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize(text):
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLE.sub(" ", text).split())


def token_f1(prediction, truth):
    pred, gold = normalize(prediction).split(), normalize(truth).split()
    overlap = sum((Counter(pred) & Counter(gold)).values())
    if overlap == 0:
        return 0
    precision, recall = 1.0 * overlap / len(pred), 1.0 * overlap / len(gold)
    return (2 * precision * recall) / (precision + recall)


def exact(prediction, truth):
    return normalize(prediction) == normalize(truth)


def evaluate(dataset, predictions):
    f1 = em = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                truths = [a["text"] for a in qa["answers"]]
                em += max(exact(predictions[qa["id"]], t) for t in truths)
                f1 += max(token_f1(predictions[qa["id"]], t) for t in truths)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}
