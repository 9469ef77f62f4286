"""A streaming argmax accuracy, registered as ``toy_accuracy``."""

import numpy as np

from ilit import Metric


class ToyAccuracy(Metric):
    higher_is_better = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, preds, labels) -> None:
        self.correct += int((np.asarray(preds).argmax(1) == np.asarray(labels)).sum())
        self.total += len(labels)

    def result(self) -> float:
        return self.correct / self.total if self.total else 0.0
