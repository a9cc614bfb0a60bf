"""Protocol B: ensemble early-warning indicators across seeds aligned on their transition (report side).

One run's residuals are autocorrelated at any cadence, so a trend test on one run has little power.
Here the unit is a *pair*: a seed of the tested ensemble condition and the reference run of the
same seed (same data split and initialisation, weight decay 0: no grokking), read at the same
steps, the ``points`` cadence steps before the tested run's transition t*.

- Aligned matrices (:func:`aligned`): per series (scope, metric), ``X`` (pairs × points) for the
  tested runs and ``Y`` for their references at the same steps (log10 when positive).
- Residuals (:func:`residuals`): deviation from the ensemble mean at each aligned time (the common
  trend), optionally each run's own drift removed (``detrend``). Default none: a per-run kernel
  detrend removes the slow fluctuations whose growth critical slowing down predicts (simulated
  power, 36 pairs × 36 points, AR(1) at 0.67, slowing 0.9: 0.25 with a Gaussian detrend of
  bandwidth 0.2, 0.98 without).
- Indicators at each aligned time, across seeds (:func:`indicators`): variance, lag-1
  autocorrelation corr_i(r_i(k), r_i(k-1)) and the AR(1) autocorrelation time (1 + ρ)/(1 − ρ),
  a monotone function of ρ (so its trend is ρ's).
- Trend: Kendall τ of an indicator against aligned time (towards t*). Test (:func:`trend_contrast`):
  Δτ = τ(tested) − τ(reference), averaged over a claim's series; one-sided p = the share of
  ``n_boot`` bootstrap resamples of the pairs (the same pairs for every series) with Δτ ≤ 0.
  Supported when p < α and the tested ensemble's mean τ > 0.
- Power (:func:`ensemble_power`): the same test on simulated pairs, AR(1) noise of the measured
  residual lag-1 autocorrelation, the tested series' coefficient covering a share ``effect`` of its
  distance to 1 by t* (the reference's constant). One series per simulation: for the mean over a
  claim's series (same effect in each, correlations ≥ 0) this is a lower bound.
- tr Σ level (:func:`level_contrast`): per pair, l(k) = log10 tr Σ(tested) − log10 tr Σ(reference)
  at the same step; its level (mean over the window), the tested run's own change (mean of the
  last ``level_fraction`` of the window minus the first) and the change of l. The claim "tr Σ
  rises before the transition" is tested on the tested runs' own change > 0 (one-sided one-sample
  t test over pairs; the reference's tr Σ collapses once its training loss goes to 0, so a change
  relative to it reads that collapse, and is reported beside); its detectable rise
  (:func:`detectable_shift`) is the analytic one-sided t-test shift at power ``target``.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import stats

from gradience.config import Section
from gradience.telemetry import signals
from gradience.telemetry.recorder import MODEL_SCOPE

ENSEMBLE_INDICATORS = ("variance", "lag1_ac", "autocorrelation_time")


class EnsembleParams(Section):
    points: int = Field(default=36, ge=10, description="aligned cadence points before t* (the window)")
    min_pairs: int = Field(default=24, ge=3, description="pairs (tested seed + its reference) a verdict needs")
    detrend: str = Field(default="none", pattern="^(gaussian|linear|none)$",
                         description="each run's own drift removed after the ensemble mean (none: the ensemble "
                                     "mean is the detrending)")
    bandwidth: float = Field(default=0.2, gt=0, le=1)
    spectral_metrics: list[str] = Field(
        default_factory=lambda: ["kappa", "stable_rank", "effective_rank", "spectral_norm", "nuclear_norm"])
    gradient_metrics: list[str] = Field(default_factory=lambda: ["grad_norm", "grad_cosine", "grad_noise_trace"])
    level_metric: str = "grad_noise_trace"
    level_fraction: float = Field(default=0.25, gt=0, le=0.5, description="share of the window at each end")
    n_boot: int = Field(default=499, ge=99)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    n_sims: int = Field(default=200, ge=20, description="simulated ensembles per effect size")
    sim_boot: int = Field(default=99, ge=19, description="bootstrap resamples in each simulated test")
    slowing_effects: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7, 0.9], min_length=1,
                                         description="slowings simulated (the claimed one is added)")


# ------------------------------------------------------------------------------- aligned ensembles


def pairs_table(transitions: pd.DataFrame) -> pd.DataFrame:
    """One row per pair: a tested ensemble run with a transition and the ensemble reference run of
    the same op and seed (``run``, ``ref``, ``seed``, ``op``, ``t_onset``, ``start``: the later t_mem)."""
    ens = transitions[transitions["ensemble"].fillna(False).astype(bool)] if "ensemble" in transitions else \
        transitions.iloc[:0]
    tested, refs = ens[~ens["reference"]], ens[ens["reference"]]
    m = tested.merge(refs[["op", "seed", "run", "t_mem", "steps_run"]], on=["op", "seed"], suffixes=("", "_ref"))
    m = m[m["t_onset"].notna()]
    return pd.DataFrame({"condition": m["condition"], "run": m["run"], "ref": m["run_ref"], "seed": m["seed"],
                         "op": m["op"], "t_onset": m["t_onset"], "start": np.fmax(m["t_mem"], m["t_mem_ref"]),
                         "ref_steps": m["steps_run_ref"]}).reset_index(drop=True)


def aligned(telemetry: pd.DataFrame, pairs: pd.DataFrame, scope: str, metric: str, points: int,
            every: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``X``, ``Y`` (pairs × points) of one series: the tested run and its reference at the steps
    t* − (points − k)·every, k = 0..points−1, log10 when positive; the pairs kept (window after both
    memorised, every value finite in both) with the reason each other pair was dropped."""
    sel = telemetry[(telemetry["scope"] == scope) & (telemetry["metric"] == metric)]
    by_run = {r: g.set_index("step")["value"] for r, g in sel.groupby("run", sort=False)}
    xs, ys, kept = [], [], []
    for r in pairs.itertuples():
        steps = (int(r.t_onset) - every * np.arange(points, 0, -1)).astype(int)
        if steps[0] < r.start:
            kept.append("window before memorisation")
            continue
        x, y = (by_run.get(run, pd.Series(dtype=float)).reindex(steps).to_numpy(dtype=float) for run in (r.run, r.ref))
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            kept.append("missing steps")
            continue
        xs.append(x)
        ys.append(y)
        kept.append("")
    info = pairs.assign(dropped=kept)
    if not xs:
        return np.empty((0, points)), np.empty((0, points)), info
    X, Y = np.array(xs), np.array(ys)
    both = np.concatenate([X, Y])
    if np.all(both > 0):
        X, Y = np.log10(X), np.log10(Y)
    return X, Y, info


def smoother(n: int, method: str, bandwidth: float) -> np.ndarray:
    """The (n × n) matrix M with ``signals.detrend(x) == M @ x`` for every x (detrending is linear)."""
    return np.stack([signals.detrend(e, method, bandwidth) for e in np.eye(n)], axis=1)


def residuals(X: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Deviation from the ensemble mean at each aligned time (axis −2: runs), then each run's own
    drift removed by ``M``; works on stacks (..., runs, points)."""
    D = X - X.mean(axis=-2, keepdims=True)
    return D @ M.T


def indicators(R: np.ndarray) -> dict[str, np.ndarray]:
    """Across runs (axis −2), at each aligned time: variance (ddof 1), lag-1 autocorrelation
    corr(r(k), r(k−1)) (NaN at k = 0) and the AR(1) autocorrelation time (1 + ρ)/(1 − ρ)."""
    var = R.var(axis=-2, ddof=1)
    a, b = R[..., :, 1:], R[..., :, :-1]
    a = a - a.mean(axis=-2, keepdims=True)
    b = b - b.mean(axis=-2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (a * b).sum(axis=-2) / np.sqrt((a * a).sum(axis=-2) * (b * b).sum(axis=-2))
    pad = np.full(rho.shape[:-1] + (1,), np.nan)
    rho = np.concatenate([pad, rho], axis=-1)
    with np.errstate(divide="ignore"):
        act = (1 + rho) / (1 - rho)
    return {"variance": var, "lag1_ac": rho, "autocorrelation_time": act}


def kendall_tau(v: np.ndarray) -> np.ndarray:
    """Kendall τ-a of each row of ``v`` (..., n) against its index, over the pairs of finite entries
    (NaN where fewer than two)."""
    ok = np.isfinite(v)
    w = np.where(ok, v, 0.0)
    n = v.shape[-1]
    iu = np.triu_indices(n, 1)
    s = np.sign(w[..., iu[1]] - w[..., iu[0]])
    both = ok[..., iu[1]] & ok[..., iu[0]]
    count = both.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (s * both).sum(axis=-1) / count, np.nan)


def _taus(X: np.ndarray, Y: np.ndarray, M: np.ndarray, indicator: str) -> tuple[np.ndarray, np.ndarray]:
    return (kendall_tau(indicators(residuals(X, M))[indicator]),
            kendall_tau(indicators(residuals(Y, M))[indicator]))


def trend_contrast(Xs: list[np.ndarray], Ys: list[np.ndarray], indicator: str, M: np.ndarray, n_boot: int,
                   rng: np.random.Generator) -> dict:
    """τ of ``indicator`` in each tested and reference ensemble (one series each of ``Xs``/``Ys``,
    same pairs), their means over series, Δτ and its one-sided bootstrap p (pairs resampled, the
    same resample for every series)."""
    X, Y = np.stack(Xs), np.stack(Ys)  # (series, pairs, points)
    tg, tc = _taus(X, Y, M, indicator)
    n = X.shape[1]
    idx = rng.integers(0, n, size=(n_boot, n))
    parts = [_taus(X[:, chunk], Y[:, chunk], M, indicator) for chunk in np.array_split(idx, max(1, n_boot // 100))]
    bg, bc = np.concatenate([g for g, _ in parts], axis=1), np.concatenate([c for _, c in parts], axis=1)  # (series, boot)
    delta = float(np.nanmean(tg - tc))
    boot = np.mean(bg - bc, axis=0)
    boot = boot[np.isfinite(boot)]  # a resample with a constant column has no correlation
    p = float((1 + np.sum(boot <= 0)) / (boot.size + 1)) if boot.size else math.nan
    lo, hi = np.quantile(boot, [0.05, 0.95]) if boot.size else (math.nan, math.nan)
    return {"tau_tested": float(np.nanmean(tg)), "tau_reference": float(np.nanmean(tc)), "delta_tau": delta,
            "delta_lo": float(lo), "delta_hi": float(hi), "p_value": p, "n_series": int(X.shape[0]),
            "n_pairs": int(n)}


def ar1_lag1(R: np.ndarray) -> float:
    """Median over runs of each residual series' own lag-1 autocorrelation (the noise simulated)."""
    vals = [signals.lag1_autocorrelation(r) for r in R.reshape(-1, R.shape[-1])]
    return float(np.nanmedian(vals)) if vals else math.nan


def simulated_pairs(n_pairs: int, points: int, phi0: float, effect: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tested AR(1) runs whose coefficient rises linearly from φ0 to φ0 + effect·(1 − φ0) by t*,
    and reference runs at constant φ0 (unit innovations: the variance rises with the coefficient)."""
    phi = phi0 + effect * (1 - phi0) * np.linspace(0, 1, points)
    X = signals.ar1_series(phi, n_pairs, rng)
    Y = signals.ar1_series(np.full(points, phi0), n_pairs, rng)
    return X, Y


def ensemble_power(n_pairs: int, points: int, phi0: float, effects: list[float], indicator: str, M: np.ndarray,
                   n_sims: int, n_boot: int, alpha: float, seed: int = 0) -> pd.DataFrame:
    """Power of :func:`trend_contrast` (one series) at each slowing ``effect``: the share of
    ``n_sims`` simulated ensembles (:func:`simulated_pairs`) where it is supported."""
    rng = np.random.default_rng(seed)
    phi0 = float(np.clip(phi0, -0.95, 0.95))
    rows = []
    for e in effects:
        hits, deltas = 0, []
        for _ in range(n_sims):
            X, Y = simulated_pairs(n_pairs, points, phi0, e, rng)
            r = trend_contrast([X], [Y], indicator, M, n_boot, rng)
            hits += r["p_value"] < alpha and r["tau_tested"] > 0
            deltas.append(r["delta_tau"])
        rows.append({"effect": float(e), "power": hits / n_sims, "median_tau": float(np.median(deltas))})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ tr Σ level


def detectable_shift(sd: float, n: int, alpha: float, target: float) -> float:
    """The smallest mean shift a one-sided one-sample t test at level α over ``n`` values of
    standard deviation ``sd`` detects with power ``target`` (noncentral t, solved numerically)."""
    if n < 2 or not np.isfinite(sd):
        return math.inf
    df, crit = n - 1, stats.t.ppf(1 - alpha, n - 1)

    def power(d: float) -> float:
        return float(stats.nct.sf(crit, df, d / sd * math.sqrt(n)))

    lo, hi = 0.0, max(sd, 1e-12)
    while power(hi) < target:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if power(mid) < target else (lo, mid)
    return hi


def level_contrast(X: np.ndarray, Y: np.ndarray, fraction: float, alpha: float, target: float) -> dict:
    """tr Σ of tested vs reference runs at matched steps (``X``, ``Y``: log10, pairs × points).

    ``level``: mean of l = X − Y over the window (log10 ratio; < 0: the tested runs' tr Σ is lower),
    one-sample t tests both ways; ``own_change``: the mean of X over the last ``fraction`` of the
    window minus the first (the tested runs' direction; > 0: rises), tested both ways;
    ``change``: the same on l (relative to the reference); ``detectable``: the smallest rise
    (log10) the one-sided test of ``own_change`` sees with power ``target``, from the pairs' sd;
    ``own_upper``: the one-sided (1 − α) upper confidence bound of ``own_change``, the largest rise
    the runs leave possible (a claimed rise above it is excluded by the data)."""
    n, k = X.shape
    if n < 2:
        return {"n_pairs": int(n), "detectable": math.inf}
    q = max(1, int(round(fraction * k)))
    lr = X - Y
    change = lr[:, -q:].mean(axis=1) - lr[:, :q].mean(axis=1)
    own = X[:, -q:].mean(axis=1) - X[:, :q].mean(axis=1)
    level = lr.mean(axis=1)

    def t(v: np.ndarray, alt: str) -> float:
        return float(stats.ttest_1samp(v, 0.0, alternative=alt).pvalue) if n >= 2 else math.nan

    return {"n_pairs": int(n), "level": float(level.mean()), "p_level_lower": t(level, "less"),
            "p_level_higher": t(level, "greater"),
            "change": float(change.mean()), "p_rise": t(change, "greater"), "p_fall": t(change, "less"),
            "own_change": float(own.mean()), "own_change_sd": float(own.std(ddof=1)),
            "p_own_rise": t(own, "greater"), "p_own_fall": t(own, "less"),
            "own_upper": float(own.mean() + stats.t.ppf(1 - alpha, n - 1) * own.std(ddof=1) / math.sqrt(n)),
            "detectable": detectable_shift(float(own.std(ddof=1)), n, alpha, target)}


# --------------------------------------------------------------------------------- the whole table


CLAIM_SERIES = {  # ensemble test → (series group, indicator)
    "h2_autocorrelation_time": ("spectral", "autocorrelation_time"),
    "lag1_autocorrelation": ("spectral", "lag1_ac"),
    "gradient_variance": ("gradient", "variance"),
}


def ensemble_series(telemetry: pd.DataFrame, ep: EnsembleParams) -> dict[str, list[tuple[str, str]]]:
    """The (scope, metric) series of each group: the spectral metrics of every weight matrix, the
    gradient metrics at scope ``model``."""
    keys = telemetry[["scope", "metric"]].drop_duplicates()
    spectral = sorted((s, m) for s, m in keys.itertuples(index=False)
                      if s != MODEL_SCOPE and m in ep.spectral_metrics)
    gradient = sorted((s, m) for s, m in keys.itertuples(index=False)
                      if s == MODEL_SCOPE and m in ep.gradient_metrics)
    return {"spectral": spectral, "gradient": gradient}


def ensemble_analysis(telemetry: pd.DataFrame, transitions: pd.DataFrame, ep: EnsembleParams, target: float,
                      claimed_slowing: float, effects: list[float], every: int,
                      seed: int = 0) -> dict[str, pd.DataFrame]:
    """``tests`` (one row per ensemble test and tested condition), ``power`` (per test × effect),
    ``level`` (the tr Σ contrast per tested condition), ``pairs`` (each pair, kept or why dropped)
    and ``curves`` (ensemble indicators against aligned time, for figures)."""
    pairs = pairs_table(transitions)
    M = smoother(ep.points, ep.detrend, ep.bandwidth)
    tests, power, level, infos, curves = [], [], [], [], []
    cache: dict[tuple, pd.DataFrame] = {}
    effects = sorted({*effects, claimed_slowing})
    for cond, pc in pairs.groupby("condition", sort=True):
        groups = ensemble_series(telemetry, ep)
        data = {g: [aligned(telemetry, pc, s, m, ep.points, every) for s, m in series]
                for g, series in groups.items()}
        # a series missing in over a tenth of the pairs (e.g. a non-finite ratio) is left out, not the pairs
        for g in list(data):
            keep = [i for i, (_, _, inf) in enumerate(data[g]) if (inf["dropped"] == "missing steps").mean() <= 0.1]
            data[g] = [data[g][i] for i in keep]
            groups[g] = [groups[g][i] for i in keep]
        # the pairs kept in every series of the condition (one set of pairs for every test)
        ok = np.ones(len(pc), dtype=bool)
        for triples in data.values():
            for _, _, info in triples:
                ok &= (info["dropped"] == "").to_numpy()
        info = pc.assign(kept=ok)
        infos.append(info)

        def kept(X: np.ndarray, inf: pd.DataFrame, ok: np.ndarray = ok) -> np.ndarray:
            return X[ok[(inf["dropped"] == "").to_numpy()]]

        for test, (group, ind) in CLAIM_SERIES.items():
            Xs = [kept(X, inf) for X, _, inf in data[group]]
            Ys = [kept(Y, inf) for _, Y, inf in data[group]]
            row = {"test": test, "tested": cond, "group": group, "indicator": ind}
            if not Xs or Xs[0].shape[0] < 3:
                tests.append(row | {"n_pairs": int(ok.sum()), "n_series": len(Xs)})
                continue
            # the same resamples (and simulations) for the tests of one group: h2 and lag-1 read one statistic
            group_seed = seed + zlib.crc32(f"{cond}|{group}".encode())
            rng = np.random.default_rng(group_seed)
            row |= trend_contrast(Xs, Ys, ind, M, ep.n_boot, rng)
            phi0 = float(np.nanmedian([ar1_lag1(residuals(X, M)) for X in Xs]))
            row["resid_lag1"] = phi0
            tests.append(row)
            # ρ and (1 + ρ)/(1 − ρ) have the same trend: one power table for both
            key = (cond, group, "variance" if ind == "variance" else "rho")
            if key not in cache:
                cache[key] = ensemble_power(row["n_pairs"], ep.points, phi0, effects, ind, M, ep.n_sims, ep.sim_boot,
                                            ep.alpha, seed=group_seed + 1)
            pw = cache[key]
            power.append(pw.assign(test=test, tested=cond, claimed=np.isclose(pw["effect"], claimed_slowing)))
            for (s, m), X, Y in zip(groups[group], Xs, Ys, strict=True):
                for role, Z in (("tested", X), ("reference", Y)):
                    v = indicators(residuals(Z, M))[ind]
                    curves.append(pd.DataFrame({"tested": cond, "test": test, "scope": s, "metric": m, "role": role,
                                                "k": np.arange(ep.points) - ep.points, "value": v}))
        lvl = [(s, m) for s, m in groups["gradient"] if m == ep.level_metric] or \
              [(MODEL_SCOPE, ep.level_metric)]
        X, Y, inf = aligned(telemetry, pc, *lvl[0], ep.points, every)
        X, Y = kept(X, inf), kept(Y, inf)
        level.append({"tested": cond, "metric": ep.level_metric}
                     | level_contrast(X, Y, ep.level_fraction, ep.alpha, target))
    return {"tests": pd.DataFrame(tests), "level": pd.DataFrame(level),
            "power": pd.concat(power, ignore_index=True) if power else
            pd.DataFrame(columns=["effect", "power", "median_tau", "test", "tested", "claimed"]),
            "pairs": pd.concat(infos, ignore_index=True) if infos else pairs.assign(kept=False),
            "curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(
                columns=["tested", "test", "scope", "metric", "role", "k", "value"])}
