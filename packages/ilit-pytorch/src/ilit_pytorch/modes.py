"""Run a user's model in eval mode without leaving it changed.

Tuning must give the FP32 model back exactly as it came, train/eval mode of every submodule included.
A model in training mode would update its batch-norm running statistics (and drop activations) on
every evaluation batch, and its baseline would not be comparable with the INT8 models, which are
always in eval mode. So ilit runs it in eval mode and puts each submodule's own flag back afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence

from torch import nn

__all__ = ["eval_mode", "restored_modes", "training_modules"]


def training_modules(model: nn.Module, modules: Optional[Sequence[nn.Module]] = None) -> List[nn.Module]:
    """The submodules of ``model`` (itself included) in training mode; ``modules``: its submodules, if known."""
    return [m for m in (model.modules() if modules is None else modules) if m.training]


@contextmanager
def eval_mode(model: nn.Module, modules: Optional[Sequence[nn.Module]] = None) -> Iterator[nn.Module]:
    """``model`` with every submodule in eval mode for the block, each one's own mode restored after.

    Only the ``training`` flags are set, one module at a time: ``Module.train`` would recurse and set one
    mode for all (a model may keep, say, a frozen batch-norm in eval mode inside a training model), and
    an override of ``train`` in the user's class could do more than flip the flag. ``modules`` is the
    list of ``model.modules()`` if the caller keeps one: walking a model of a thousand modules costs
    ~0.5 ms, too much to add to every timed inference; reading the flags of a kept list costs ~30 us.
    """
    switched = training_modules(model, modules)
    for m in switched:
        m.training = False
    try:
        yield model
    finally:
        for m in switched:
            m.training = True


@contextmanager
def restored_modes(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, and afterwards every submodule's flag exactly as before, whatever
    the block did: the user's ``eval_func`` may call ``model.eval()`` or ``model.train()`` on it."""
    flags = [(m, m.training) for m in model.modules()]
    for m, _ in flags:
        m.training = False
    try:
        yield model
    finally:
        for m, was in flags:
            m.training = was
