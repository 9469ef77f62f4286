"""What ilit reads from a dataloader's batches (public API for adaptors).

A batch is ``(inputs, labels)``: a tuple or list of exactly two items. ``inputs`` may be one tensor or array,
a tuple/list (the model's positional arguments) or a dict (its keyword arguments); how an adaptor feeds them
to the model is its own business. A batch that is not such a pair is taken as inputs alone (calibration and
``inspect_tensor`` need no labels). Adaptors split batches with these helpers rather than unpacking them.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional, Tuple

__all__ = ["split_batch", "batch_inputs", "selected_batches"]


def split_batch(batch: Any) -> Tuple[Any, Optional[Any]]:
    """``(inputs, labels)`` of one batch: a 2-item tuple or list is that pair; anything else is inputs, labels None."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def batch_inputs(batch: Any) -> Any:
    """The inputs of one batch (see :func:`split_batch`)."""
    return split_batch(batch)[0]


def selected_batches(dataloader: Iterable[Any], iteration_list: Iterable[int]) -> Iterator[Tuple[int, Any]]:
    """``(index, batch)`` for each 0-based batch index in ``iteration_list``, in loader order, each once.

    This is how ``inspect_tensor`` picks its batches: indices past the loader's end are skipped, and the loader
    is not read beyond the last index wanted.
    """
    wanted = {int(i) for i in iteration_list}
    if not wanted:
        return
    last = max(wanted)
    for i, batch in enumerate(dataloader):
        if i in wanted:
            yield i, batch
        if i >= last:
            break
