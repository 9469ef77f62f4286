"""Calibration statistics, collected once per calibration key and loaded into every prepared model.

Tuning calls ``quantize`` many times with configs that differ only in schemes, granularities or which
ops fall back. Observers see fp32 activations whatever the config, so the statistics of each node of
the fused graph (min/max, and a histogram for ``kl``/``percentile``) are collected once, by running the
calibration batches through the fused fp32 graph, and copied into the fresh observers ``prepare_fx``
inserts. An observer that watches several nodes (shared by pooling, cat, ...) gets their union.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn
from torch.fx import GraphModule, Node

from ilit.arguments import describe_inputs  # re-exported: one description of a batch in core and adaptor errors
from ilit.batches import batch_inputs

from . import backend
from .graph import Analysis, keep_off_fast_path, set_submodule

__all__ = ["Tap", "collect_stats", "load_stats", "stat_kinds", "run_batches", "call_model", "as_call",
           "dict_is_positional", "describe_inputs"]

Stats = Dict[str, Dict[str, Dict[str, nn.Module]]]  # unit prefix -> node name -> kind -> recording observer


def stat_kinds(algorithms: Iterable[str]) -> List[str]:
    """The statistics the given activation algorithms need: 'minmax' and/or 'hist'."""
    kinds = {"minmax" if a == "minmax" else "hist" for a in algorithms}
    return sorted(kinds)


def _tensor(x: Any) -> Any:
    """numpy arrays as tensors, inside tuples, lists and dicts too (any nesting); anything else as it is."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, Mapping):
        return {k: _tensor(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_tensor(v) for v in x) if type(x) in (tuple, list) else x
    return x


@functools.lru_cache(maxsize=256)
def _keywords_of(forward: Any) -> "tuple[bool, frozenset, int]":
    """(takes **kwargs, parameter names, positional parameters) of a forward; (True, {}, 0) if unknown."""
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return True, frozenset(), 0
    params = list(sig.parameters.values())
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    names = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)
    return var_kw, names, positional


def dict_is_positional(model: Any, inputs: Mapping[str, Any]) -> bool:
    """Whether a dict of inputs is the model's one positional argument rather than its keyword arguments.

    Keywords unless the forward takes no ``**kwargs``, some key is none of its parameter names, and it
    has a positional parameter: a ``SentenceTransformer``-style ``forward(features)`` gets the tokenizer's
    dict whole, a Hugging Face ``forward(input_ids=..., attention_mask=...)`` gets it as keywords.
    """
    forward = getattr(getattr(model, "ilit_call_target", model), "forward", None)
    if forward is None:
        return False
    func = getattr(forward, "__func__", forward)
    try:
        var_kw, names, positional = _keywords_of(func)
    except TypeError:  # unhashable forward
        return False
    return not var_kw and positional > 0 and not set(inputs) <= names


def as_call(model: Any, inputs: Any) -> "tuple[tuple, Dict[str, Any]]":
    """The (args, kwargs) ``model`` is called with for one batch's inputs (the inputs contract, README):

    - a tensor or array: one positional argument;
    - a tuple or list: positional arguments, each as it is (nested tuples and dicts are passed whole);
    - a dict: keyword arguments, or one positional argument when the forward cannot take its keys as
      keywords (:func:`dict_is_positional`); ``(the_dict,)``, a 1-tuple, always passes it positionally.
    """
    inputs = _tensor(inputs)
    if isinstance(inputs, Mapping):
        if dict_is_positional(model, inputs):
            return (inputs,), {}
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def call_model(model: Any, inputs: Any) -> Any:
    """Call ``model`` on one batch's inputs as :func:`as_call` says."""
    args, kwargs = as_call(model, inputs)
    return model(*args, **kwargs)


def run_batches(model: Any, dataloader: Iterable[Any], iterations: int) -> int:
    """Run up to ``iterations`` batches through ``model`` without autograd; return how many ran."""
    n = 0
    with torch.no_grad():
        for batch in dataloader:
            if n >= iterations:
                break
            call_model(model, batch_inputs(batch))
            n += 1
    return n


class _TapInterpreter(fx.Interpreter):
    def __init__(self, gm: GraphModule, on_output: Callable[[str, torch.Tensor], None]) -> None:
        super().__init__(gm)
        self._on_output = on_output

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        if n.op != "get_attr" and isinstance(out, torch.Tensor) and (out.is_floating_point() or out.is_quantized):
            self._on_output(n.name, out.detach())
        return out


class Tap(nn.Module):
    """Runs a graph node by node and hands each node's float (or quantized) output to ``on_output``."""

    def __init__(self, gm: GraphModule, on_output: Callable[[str, torch.Tensor], None]) -> None:
        super().__init__()
        self.gm = gm
        self.ilit_call_target = gm  # inputs are bound to the graph's own signature (see as_call)
        self._on_output = on_output
        self._sig = inspect.signature(gm.forward)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = self._sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return _TapInterpreter(self.gm, self._on_output).run(*bound.arguments.values())


def tapped_model(model: nn.Module, analysis: Analysis,
                 make_callback: Callable[[str], Callable[[str, torch.Tensor], None]]) -> nn.Module:
    """A stand-in for ``model`` that runs its fused fp32 graph(s) through taps: the tapped graph itself
    when the model traced whole, else a copy of the model with each unit swapped for its tap."""
    work: nn.Module = copy.deepcopy(model).eval() if not analysis.traceable else None  # type: ignore[assignment]
    for unit in analysis.units:
        tap = Tap(unit.fused, make_callback(unit.prefix))  # static analysis graphs are in eval mode
        if unit.prefix == "":
            return tap
        set_submodule(work, unit.prefix, tap)
    keep_off_fast_path(work)
    return work


def collect_stats(model: nn.Module, analysis: Analysis, dataloader: Iterable[Any], iterations: int,
                  kinds: Sequence[str]) -> "tuple[Stats, int]":
    """Run ``iterations`` calibration batches once; return every node's statistics and the batches run."""
    stats: Stats = {u.prefix: {} for u in analysis.units}

    def make_callback(prefix: str) -> Callable[[str, torch.Tensor], None]:
        unit_stats = stats[prefix]

        def record(node: str, value: torch.Tensor) -> None:
            recs = unit_stats.get(node)
            if recs is None:
                recs = unit_stats[node] = {k: backend.stats_observer(k) for k in kinds}
            for obs in recs.values():
                obs(value)
        return record

    ran = run_batches(tapped_model(model, analysis, make_callback), dataloader, iterations)
    return stats, ran


def _rebin(records: Sequence[nn.Module], bins: int) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """Merge histograms (each over its own [min, max]) onto ``bins`` equal bins over their union."""
    live = [r for r in records if float(r.min_val) <= float(r.max_val)]
    lo = min(float(r.min_val) for r in live)
    hi = max(float(r.max_val) for r in live)
    if len(live) == 1 and live[0].bins == bins:
        r = live[0]
        return r.histogram.clone(), r.min_val.clone(), r.max_val.clone()
    dst = np.linspace(lo, hi, bins + 1)
    total = np.zeros(bins)
    for r in live:
        hist = r.histogram.double().numpy()
        a, b = float(r.min_val), float(r.max_val)
        if b <= a or hi <= lo:
            idx = min(bins - 1, int((a - lo) / (hi - lo) * bins)) if hi > lo else 0
            total[idx] += hist.sum()
            continue
        src = np.linspace(a, b, len(hist) + 1)
        cdf = np.concatenate([[0.0], np.cumsum(hist)])
        total += np.diff(np.interp(dst, src, cdf, left=0.0, right=cdf[-1]))
    dtype = records[0].min_val.dtype
    return torch.from_numpy(total).float(), torch.tensor(lo, dtype=dtype), torch.tensor(hi, dtype=dtype)


def _load_one(obs: nn.Module, records: Sequence[Dict[str, nn.Module]]) -> bool:
    if isinstance(obs, backend.HIST_OBSERVERS):
        recs = [r.get("hist") for r in records]
        if any(r is None for r in recs):
            return False
        if all(float(r.min_val) > float(r.max_val) for r in recs):  # type: ignore[union-attr]
            return True  # never saw data: leave it uninitialised, as calibration would
        obs.histogram, obs.min_val, obs.max_val = _rebin(recs, obs.bins)  # type: ignore[arg-type]
        return True
    if not hasattr(obs, "min_val"):
        return False
    recs = [r.get("minmax") or r.get("hist") for r in records]
    if any(r is None for r in recs):
        return False
    obs.min_val = torch.stack([r.min_val for r in recs]).min().reshape(obs.min_val.shape).to(obs.min_val.dtype)  # type: ignore[union-attr]
    obs.max_val = torch.stack([r.max_val for r in recs]).max().reshape(obs.max_val.shape).to(obs.max_val.dtype)  # type: ignore[union-attr]
    return True


def load_stats(prepared: Mapping[str, GraphModule], stats: Stats) -> bool:
    """Fill every observer of the prepared units from ``stats``; False if some node was never recorded."""
    for prefix, gm in prepared.items():
        unit_stats = stats.get(prefix, {})
        modules = dict(gm.named_modules(remove_duplicate=False))
        groups: Dict[int, "tuple[nn.Module, List[Node]]"] = {}
        for node in gm.graph.nodes:
            if node.op != "call_module" or not backend.is_observer(modules[node.target]):
                continue
            src = node.args[0]
            while isinstance(src, Node) and src.op == "call_module" and backend.is_observer(modules[src.target]):
                src = src.args[0]
            if not isinstance(src, Node):
                return False
            obs = modules[node.target]
            groups.setdefault(id(obs), (obs, []))[1].append(src)
        for obs, sources in groups.values():
            if all(s.op == "get_attr" for s in sources):  # a weight used functionally: observe it directly
                for s in sources:
                    is_param = s.target in dict(gm.named_parameters())
                    obs(gm.get_parameter(s.target) if is_param else getattr(gm, s.target))
                continue
            records = [unit_stats.get(s.name) for s in sources]
            if any(r is None for r in records) or not _load_one(obs, records):  # type: ignore[arg-type]
                return False
    return True
