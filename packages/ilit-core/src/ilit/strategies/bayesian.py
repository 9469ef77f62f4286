"""``bayesian``: Gaussian-process search over every op's choices, fp32 fallback included.

What it optimizes: the share of ops that run quantized (each fallback costs speed and size),
subject to the accuracy goal. A Gaussian process (scikit-learn's ``GaussianProcessRegressor``)
models each config's accuracy margin over the goal's threshold; the number of quantized ops of a
candidate is known exactly. Candidates are scored by constrained expected improvement: the
improvement in quantized ops over the best config meeting the goal so far, times the GP's
probability that the candidate meets the goal. Before any config meets it, that is the
probability of meeting it weighted by how much the candidate quantizes.

The search space: one categorical dimension per op (its quantization choices, and fp32 when the op
may fall back), plus the calibration batch count when several are allowed. The GP sees each op's
choice one-hot encoded field by field (fallback, then each weight/activation field that varies),
so what it learns about, say, ``asym`` on one op carries over between that op's choices.

It starts with the most-preferred model-wise config, then an initial design over the fallback
dimensions (not only the model-wise ones): the shared fallback search of
:mod:`ilit.strategies.fallback` on top of that config (the op-type stage, one-op probes in a seeded
order, groups of interacting ops through the graph, a shrinking pass), which is what finds
interacting ops (an outlier tensor between two ops needs both in fp32) that random configs
practically never isolate. Every config it tries trains the GP. Then, while the budget lasts, the
GP scores a pool of candidates each step: every unevaluated config when the space is small, else
seeded random configs plus local moves around the best configs so far, unions of their fallback
sets and small subsets of their fallback ops. Until a config meets the goal it climbs an optimistic
bound of the predicted margin among configs with at most one fallback more than the closest one;
after, constrained expected improvement. It is a deterministic function of the seed
(``tuning.random_seed``) and the observed results, so a resumed run replays exactly. It never
proposes a config already evaluated, and ends when the space is exhausted (the tuner's
``max_trials`` and ``timeout`` also end it).

bf16: where the adaptor offers it, an op's bf16 fallback is one more choice of its dimension. It
counts as half quantized in the share this strategy maximizes (it keeps part of int8's speed-up) and
as a fallback where fallbacks are counted; the initial design's fallback search tries bf16 first
(see :mod:`ilit.strategies.fallback`), and random configs and local moves fall ops back to bf16
where they can.

Needs scikit-learn: ``pip install 'ilit-core[bayesian]'``. It is imported only when this strategy runs.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Dict, FrozenSet, Generator, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..tune_cfg import TENSOR_FIELDS
from ..strategy import Strategy, TrialResult
from ..tune_cfg import TuneCfg
from .fallback import FallbackSearch, Ranking

__all__ = ["BayesianStrategy", "require_sklearn"]

INSTALL_HINT = "pip install 'ilit-core[bayesian]'"


def require_sklearn() -> Any:
    """Import scikit-learn's Gaussian-process module, or say how to install it."""
    try:
        from sklearn import gaussian_process
    except ImportError as exc:
        raise ImportError(f"the 'bayesian' tuning strategy needs scikit-learn, which is not installed: "
                          f"{INSTALL_HINT} (or choose tuning.strategy basic or mse)") from exc
    return gaussian_process


def _one_thread() -> Any:
    """Run the GP's small linear algebra on one BLAS thread, so idle BLAS threads do not spin
    beside the framework's own threads while the tuner measures latency."""
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


class BayesianStrategy(Strategy):
    """Constrained expected improvement with a Gaussian process over per-op categorical choices."""

    #: seeded random configs tried after the initial design, before the GP takes over
    n_initial: int = 0
    #: random candidates scored per step when the space is too big to score whole
    pool_size: int = 512
    #: spaces with at most this many configs are scored exhaustively
    enumerate_limit: int = 4096
    #: random configs fall back each op with a probability drawn from [0, this)
    max_fallback_rate: float = 0.5
    #: random configs give each op a random choice (not the model-wise one) with this probability
    mix_rate: float = 0.1
    #: before any config meets the goal: how optimistic the margin bound the search climbs is (mean + this x sd)
    ucb_kappa: float = 1.0
    #: how strongly the acquisition prefers fewer fallbacks (gain ** (this x number of ops))
    fallback_weight: float = 1.0
    #: before a config meets the goal, candidates have at most this many more fallbacks than the closest
    max_new_fallbacks: int = 1
    #: how many of the anchors' fallback ops small candidate sets are drawn from
    max_small_set_ops: int = 16
    #: the configs closest to meeting the goal that the pool's local moves start from
    n_anchors: int = 4
    #: at most this many ops get single-op moves around each anchor per step (keeps big models fast)
    max_local_ops: int = 64

    @classmethod
    def check(cls, adaptor: Any) -> None:
        super().check(adaptor)
        require_sklearn()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sp = self.space
        self._ops = sp.ops
        self._choices = [sp.op_choices[op] for op in self._ops]
        self._iters = list(sp.iterations) or [1]
        self._fp32, self._bf16 = (np.array([next((i for i, c in enumerate(ch) if c["activation"]["dtype"] == dt), -1)
                                            for ch in self._choices], dtype=np.int64) for dt in ("fp32", "bf16"))
        # where an op falls back first: bf16 if the adaptor offers it, else fp32
        self._pref_fb = np.where(self._bf16 >= 0, self._bf16, self._fp32)
        self._sizes = np.array([len(ch) for ch in self._choices] + [len(self._iters)])
        self._tables = [self._op_table(ch, fp) for ch, fp in zip(self._choices, self._fp32)]
        self._tables.append(np.eye(len(self._iters)) if len(self._iters) > 1 else np.zeros((1, 0)))
        self.space_size = math.prod(int(s) for s in self._sizes)  # a Python int: no overflow for big models
        self._n_varying = max(1, int(sum(1 for ch in self._choices if len(ch) > 1)))

    # ------------------------------------------------------------------ encoding
    @staticmethod
    def _op_table(choices: Sequence[Dict[str, Any]], fp32: int) -> np.ndarray:
        """One row per choice: [is fp32] + one-hot of each weight/activation field that varies."""
        if len(choices) <= 1:
            return np.zeros((len(choices), 0))
        quant = [c for i, c in enumerate(choices) if i != fp32]
        columns: List[Tuple[str, str, str]] = []
        for part in ("weight", "activation"):
            for fld in TENSOR_FIELDS:
                values = sorted({c.get(part, {}).get(fld) for c in quant} - {None})
                if len(values) > 1:
                    columns += [(part, fld, v) for v in values]
        rows = []
        for i, c in enumerate(choices):
            row = [1.0 if i == fp32 else 0.0]
            row += [1.0 if i != fp32 and c.get(part, {}).get(fld) == v else 0.0 for part, fld, v in columns]
            rows.append(row)
        return np.asarray(rows, dtype=float)

    def features(self, vecs: np.ndarray) -> np.ndarray:
        """The GP's inputs for index vectors (one row per config)."""
        vecs = np.atleast_2d(vecs)
        return np.hstack([self._tables[j][vecs[:, j]] for j in range(len(self._tables))])

    def encode(self, tune_cfg: TuneCfg) -> Optional[np.ndarray]:
        """The index vector of a tune_cfg from this space, or None if it is not one."""
        vec = []
        for op, choices in zip(self._ops, self._choices):
            body = {k: v for k, v in tune_cfg["ops"].get(op, {}).items() if k != "op_type"}
            try:
                vec.append(choices.index(body))
            except ValueError:
                return None
        try:
            vec.append(self._iters.index(int(tune_cfg["calibration"]["iterations"])))
        except ValueError:
            return None
        return np.asarray(vec, dtype=np.int64)

    def decode(self, vec: np.ndarray) -> TuneCfg:
        """The tune_cfg of an index vector."""
        op_cfgs = {op: self._choices[j][int(vec[j])] for j, op in enumerate(self._ops)}
        return self.space.make_config(self.space.global_choices[0], self._iters[int(vec[-1])], op_cfgs=op_cfgs)

    def quantized_share(self, vecs: np.ndarray) -> np.ndarray:
        """The fraction of ops each config keeps quantized, a bf16 op counting half (what this strategy maximizes)."""
        vecs = np.atleast_2d(vecs)
        bf16 = ((vecs[:, :-1] == self._bf16[None, :]) & (self._bf16[None, :] >= 0)).sum(axis=1)
        return ((~self._fallen(vecs)).sum(axis=1) + 0.5 * bf16) / len(self._ops)

    def _fallen(self, vecs: np.ndarray) -> np.ndarray:
        """Per config and op: whether the op falls back (to fp32 or bf16)."""
        ops = np.atleast_2d(vecs)[:, :-1]
        return (((ops == self._fp32[None, :]) & (self._fp32[None, :] >= 0))
                | ((ops == self._bf16[None, :]) & (self._bf16[None, :] >= 0)))

    def _all_fp32(self, vecs: np.ndarray) -> np.ndarray:
        """Configs with no int8 op (every op in fp32 or bf16): not quantized models, never proposed."""
        return np.all(self._fallen(vecs), axis=1)

    # ------------------------------------------------------------------ the search
    def configs(self) -> Iterator[TuneCfg]:
        require_sklearn()
        rng = np.random.default_rng(self.context.seed)
        self._X: List[np.ndarray] = []
        self._R: List[TrialResult] = []
        self._seen: set = set()

        def propose(vec: np.ndarray) -> Iterator[TuneCfg]:
            self._seen.add(vec.tobytes())
            yield self.decode(vec)
            if self.last is not None:
                self._X.append(vec)
                self._R.append(self.last)

        mw = [v for v in (self.encode(c) for c in self.space.model_wise_configs()) if v is not None]
        self._mw = np.asarray(mw, dtype=np.int64).reshape(-1, len(self._sizes))
        self.next_phase("model-wise")
        if len(self._mw) and not self._all_fp32(self._mw[:1])[0]:
            yield from propose(self._mw[0])  # the most-preferred model-wise config first
            if not (self.last is not None and self.last.meets):
                yield from self._fallback_design(rng, self._mw[0])
        self.next_phase("gaussian process")
        for _ in range(self.n_initial):
            vec = self._random_new(rng)
            if vec is None:
                break
            yield from propose(vec)
        while len(self._seen) < self.space_size:
            vec = self._next(rng)
            if vec is None:
                return
            yield from propose(vec)

    def _fallback_design(self, rng: np.random.Generator, base: np.ndarray) -> Iterator[TuneCfg]:
        """The initial design over the fallback dimensions: the shared fallback search on top of ``base``,
        its one-op probes in a seeded order; every config it tries also trains the GP."""
        base_cfg = self.decode(base)
        candidates = self.space.fallback_candidates(base_cfg)
        if not candidates:
            return
        order = [candidates[int(i)] for i in rng.permutation(len(candidates))]
        for dtype in self.space.fallback_dtypes(candidates):  # bf16 fallback first where the space offers it
            search = FallbackSearch(self, base_cfg, candidates, dtype)

            def rank(kept: FrozenSet[str], search: FallbackSearch = search) -> Generator[TuneCfg, None, Ranking]:
                return (yield from search.single_probes(kept, order))

            for cfg in search.search(rank):
                vec = self.encode(cfg)
                if vec is not None:
                    self._seen.add(vec.tobytes())
                yield cfg
                if vec is not None and self.last is not None:
                    self._X.append(vec)
                    self._R.append(self.last)
            if search.passing is not None or any(r.meets for r in self._R):
                return

    def _random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` seeded random configs: a random model-wise config, a few ops given another choice
        (``mix_rate``), then fp32 fallback at a per-config rate in [0, max_fallback_rate).

        Starting from model-wise configs keeps most candidates uniform, which frameworks that cannot
        mix some choices across ops (one activation dtype per model, ...) can build.
        """
        if len(self._mw):
            out = self._mw[rng.integers(0, len(self._mw), n)].copy()
        else:
            out = np.zeros((n, len(self._sizes)), dtype=np.int64)
        for j, size in enumerate(self._sizes):
            other = rng.integers(0, size, n)
            out[:, j] = np.where(rng.uniform(size=n) < (self.mix_rate if len(self._mw) else 1.0), other, out[:, j])
        rate = rng.uniform(0.0, self.max_fallback_rate, n)
        for j, fp in enumerate(self._fp32):
            if fp < 0 or self._sizes[j] <= 1:
                continue
            n_quant = self._sizes[j] - 1
            quant = rng.integers(0, n_quant, n)
            quant = np.where(quant >= fp, quant + 1, quant)  # a random quantized choice
            quant = np.where(out[:, j] == fp, quant, out[:, j])  # keep the choice made above unless fp32
            out[:, j] = np.where(rng.uniform(size=n) < rate, self._pref_fb[j], quant)
        return out

    def _random_new(self, rng: np.random.Generator) -> Optional[np.ndarray]:
        for _ in range(64):
            vec = self._random(rng, 1)[0]
            if vec.tobytes() not in self._seen and not self._all_fp32(vec[None, :])[0]:
                return vec
        pool = self._pool(rng)
        return pool[0] if len(pool) else None

    def _enumerate(self) -> np.ndarray:
        return np.array(list(itertools.product(*(range(int(s)) for s in self._sizes))), dtype=np.int64)

    def _local_moves(self, rng: np.random.Generator, anchor: np.ndarray) -> List[np.ndarray]:
        """Configs one or a few op changes away from ``anchor``."""
        moves: List[np.ndarray] = []
        varying = [j for j, size in enumerate(self._sizes) if size > 1]
        if len(varying) > self.max_local_ops:  # big models: single-op moves on a seeded sample of ops
            varying = sorted(int(j) for j in rng.choice(varying, size=self.max_local_ops, replace=False))
        # ops being quantized take their choice in the model-wise config most like the anchor
        pref = self._mw[int(np.argmax((self._mw == anchor[None, :]).sum(axis=1)))] if len(self._mw) else None
        for j in varying:
            size = self._sizes[j]
            fp = self._fp32[j] if j < len(self._fp32) else -1
            v = anchor.copy()
            if fp >= 0 and anchor[j] == fp:  # quantize it
                v[j] = pref[j] if pref is not None and pref[j] != fp else (fp + 1) % size
            elif fp >= 0:  # fall it back: an int8 op to bf16 where it can, a bf16 op to fp32
                v[j] = fp if anchor[j] == self._bf16[j] else self._pref_fb[j]
            else:
                v[j] = (anchor[j] + 1) % size
            moves.append(v)
            w = anchor.copy()
            w[j] = rng.integers(0, size)
            moves.append(w)
        is_fallen = self._fallen(anchor)[0]
        fallen = [j for j in range(len(self._fp32)) if is_fallen[j]]
        quantized = [j for j in range(len(self._fp32)) if self._fp32[j] >= 0 and not is_fallen[j]]
        for _ in range(min(4 * len(self._ops), 2 * self.max_local_ops)):
            v = anchor.copy()
            if fallen and (not quantized or rng.uniform() < 0.5):  # quantize several fallen ops at once
                k = int(rng.integers(1, len(fallen) + 1))
                for j in rng.choice(fallen, size=k, replace=False):
                    if pref is not None and pref[j] != self._fp32[j]:
                        v[j] = pref[j]
                    else:
                        v[j] = (self._fp32[j] + 1) % self._sizes[j]
            elif quantized:  # fall back several quantized ops at once
                k = int(rng.integers(1, min(len(quantized), 4) + 1))
                for j in rng.choice(quantized, size=k, replace=False):
                    v[j] = self._pref_fb[j]
            moves.append(v)
        return moves

    def _unions(self, anchors: List[np.ndarray]) -> np.ndarray:
        """Each two anchors' fallback sets together (independent sensitive ops found by different configs)."""
        out = []
        for a, b in itertools.combinations(anchors, 2):
            v = a.copy()
            fb = self._fallen(b)[0]
            v[:-1][fb] = b[:-1][fb]
            out.append(v)
        return np.asarray(out, dtype=np.int64).reshape(-1, len(self._sizes))

    def _anchors(self) -> List[np.ndarray]:
        """The configs to search around: the best meeting the goal, and the closest to meeting it."""
        if not self._X:
            return []
        X = np.asarray(self._X)
        q = self.quantized_share(X)
        margin = self._margins()
        anchors: List[np.ndarray] = []
        meets = np.array([r.meets for r in self._R])
        if meets.any():
            idx = np.flatnonzero(meets)
            best = idx[np.lexsort((-margin[idx], -q[idx]))[0]]
            anchors.append(X[best])
        for i in np.argsort(-margin, kind="stable")[:self.n_anchors]:
            anchors.append(X[i])
        return anchors

    def _pool(self, rng: np.random.Generator) -> np.ndarray:
        """Unevaluated candidate configs, in a deterministic order."""
        if self.space_size <= self.enumerate_limit:
            cands = self._enumerate()
        else:
            parts = [self._random(rng, self.pool_size)]
            anchors = self._anchors()
            for anchor in anchors:
                parts.append(np.asarray(self._local_moves(rng, anchor), dtype=np.int64))
            for extra in (self._unions(anchors), self._small_sets(anchors)):
                if len(extra):
                    parts.append(extra)
            cands = np.vstack(parts)
        out, keys = [], set(self._seen)
        for v in cands:
            k = v.tobytes()
            if k in keys:
                continue
            keys.add(k)
            out.append(v)
        pool = np.asarray(out, dtype=np.int64).reshape(-1, len(self._sizes))
        pool = pool[~self._all_fp32(pool)] if len(pool) else pool
        return self._grow_slowly(pool)

    def _n_fallback(self, vecs: np.ndarray) -> np.ndarray:
        return self._fallen(vecs).sum(axis=1)

    def _grow_slowly(self, pool: np.ndarray) -> np.ndarray:
        """Before any config meets the goal, only candidates with at most one fallback more than the
        config closest to meeting it: the first passing config (what timeout 0 returns) stays small."""
        if not self._X or any(r.meets for r in self._R) or not len(pool):
            return pool
        closest = np.asarray(self._X)[int(np.argmax(self._margins()))]
        allowed = int(self._n_fallback(closest)[0]) + self.max_new_fallbacks
        small = pool[self._n_fallback(pool) <= allowed]
        return small if len(small) else pool

    def _small_sets(self, anchors: List[np.ndarray]) -> np.ndarray:
        """The preferred model-wise config with 1 to 3 of the anchors' fallback ops in fp32: which of the
        ops a helpful group keeps in fp32 are the ones that matter."""
        if not len(self._mw):
            return np.zeros((0, len(self._sizes)), dtype=np.int64)
        base = self._mw[0]
        ops: List[int] = []
        for a in anchors:
            fallen = self._fallen(a)[0]
            ops += [j for j in range(len(self._fp32)) if fallen[j] and j not in ops]
        ops = ops[:self.max_small_set_ops]
        out = []
        for k in (1, 2, 3):
            for combo in itertools.combinations(ops, k):
                v = base.copy()
                v[list(combo)] = self._pref_fb[list(combo)]
                out.append(v)
        return np.asarray(out, dtype=np.int64).reshape(-1, len(self._sizes))

    def _margins(self) -> np.ndarray:
        """Each observed config's accuracy margin over the goal, relative to the baseline (higher = better)."""
        ctx = self.context
        crit = self.config.tuning.accuracy_criterion
        thr = crit.threshold(ctx.baseline, ctx.higher_is_better)
        scale = max(abs(ctx.baseline), 1e-12)
        accs = np.array([r.accuracy for r in self._R], dtype=float)
        m = (accs - thr) / scale if ctx.higher_is_better else (thr - accs) / scale
        bad = ~np.isfinite(m)
        if bad.any():  # a failed trial: worse than anything observed
            finite = m[~bad]
            m[bad] = (finite.min() - max(1.0, float(np.ptp(finite)))) if finite.size else -1.0
        return m

    def _fit(self) -> Any:
        """Fit the GP to the margins seen so far (hyperparameters by maximum likelihood, seeded)."""
        gp_mod = require_sklearn()
        k = gp_mod.kernels
        X = self.features(np.asarray(self._X))
        # additive per-op effects (the linear part) plus interactions (the Matern part); configs one
        # op apart are about 1 apart, so a shorter length scale would only memorize the trials
        kernel = (k.ConstantKernel(1.0, (1e-3, 1e3)) * k.DotProduct(1.0, "fixed")
                  + k.ConstantKernel(1.0, (1e-3, 1e3)) * k.Matern(math.sqrt(max(X.shape[1], 1)), (1.0, 1e3), nu=2.5)
                  + k.WhiteKernel(1e-3, (1e-6, 1e-1)))
        gp = gp_mod.GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=0,
                                             random_state=int(self.context.seed) % (2 ** 32))
        with warnings.catch_warnings(), _one_thread():
            warnings.simplefilter("ignore")
            gp.fit(X, self._margins())
        return gp

    def acquisition(self, gp: Any, pool: np.ndarray) -> np.ndarray:
        """The log of each candidate's constrained expected improvement (see the module docstring), or,
        before any config meets the goal, an upper bound of its predicted margin.

        Logs keep the ranking meaningful when every candidate is far from meeting the goal, where
        the probabilities themselves would all round to 0; -inf marks no possible improvement.
        """
        from scipy.special import log_ndtr  # scipy comes with scikit-learn

        with warnings.catch_warnings(), _one_thread():
            warnings.simplefilter("ignore")
            mu, sd = gp.predict(self.features(pool), return_std=True)
        log_p_meet = log_ndtr(mu / np.maximum(sd, 1e-9))
        q = self.quantized_share(pool)
        met = [self.quantized_share(x[None, :])[0] for x, r in zip(self._X, self._R) if r.meets]
        if not met:
            # nothing meets the goal yet: far from it, the probability of meeting it only rewards
            # uncertainty (random configs); climb the predicted margin instead (an optimistic bound), the
            # pool holding only configs with at most one fallback more than the closest (_grow_slowly)
            return mu + self.ucb_kappa * sd + 1e-6 * q
        q_best = max(met) if met else 0.0
        step = 0.5 / len(self._ops)  # a candidate as quantized as the best still has a small value
        gain = q - q_best + step
        with np.errstate(divide="ignore"):
            # gain ** n_ops: each op kept in fp32 must buy about e times the probability of meeting the
            # goal, so the first passing config (what timeout 0 returns) keeps few ops in fp32
            weight = self.fallback_weight * len(self._ops)
            return np.where(gain > 0, log_p_meet + weight * np.log(np.maximum(gain, 1e-300)), -np.inf)

    def _next(self, rng: np.random.Generator) -> Optional[np.ndarray]:
        pool = self._pool(rng)
        if not len(pool):
            return None
        if len(self._X) < 2:
            return pool[0]
        gp = self._fit()
        acq = self.acquisition(gp, pool)
        return pool[int(np.argmax(acq))]
