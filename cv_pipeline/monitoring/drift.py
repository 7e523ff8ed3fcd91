"""Two-sample drift tests between a reference (the champion's training split) and a window of served
requests: on the inputs' image statistics, on the model's penultimate features and on its predictions.

Each test returns a `DriftResult` whose verdict holds at the stated `alpha` as a whole: several
per-feature tests are combined with Holm's step-down correction, and the representation test is one
permutation test. Too few samples give no verdict (`drifted=None`), never a false alarm.

Representation drift follows Rabanser, Guennemann and Lipton, "Failing Loudly: An Empirical Study of
Methods for Detecting Dataset Shift" (NeurIPS 2019): PCA fitted on half of the reference, then a
kernel two-sample test (unbiased MMD^2, Gaussian kernel, median-heuristic bandwidth) of the other
half against the window, with a permutation p-value. Pure numpy and scipy.

The tests take the rows of each side as independent. Crops of one image are not (they share its
background, light and encoding), so a reference of crops needs more images than its row count
suggests: `benchmarks/drift.py` measured more false alarms with 300 reference images than with 1000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = ["DriftResult", "holm", "input_drift", "representation_drift", "prediction_drift"]

_TOP = 5
_PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class DriftResult:
    """The verdict of one drift test on one window, with what moved most."""

    test: str  # "input_drift", "representation_drift", "prediction_drift"
    method: str  # e.g. "ks+holm", "mmd-permutation(pca=32)", "chi2+ks+holm"
    statistic: float | None  # the test's statistic (max KS D; MMD^2; ...), None when not computed
    p_value: float | None  # the (corrected) p-value, None when not computed
    alpha: float  # the significance level the verdict used (the threshold)
    drifted: bool | None  # None when the window (or reference) is too small
    n_reference: int
    n_current: int
    top_features: list[tuple[str, float]]  # what moved most, with its score, largest first, at most 5
    message: str  # one human line
    details: dict = field(default_factory=dict)  # per-feature / per-component statistics (JSON-able)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; `threshold` is `alpha` under the name dashboards use."""
        return {
            "test": self.test,
            "method": self.method,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "threshold": self.alpha,
            "drifted": self.drifted,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "top_features": [[name, score] for name, score in self.top_features],
            "message": self.message,
            "details": self.details,
        }


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input's order: reject those below alpha and the
    family-wise error rate stays at most alpha under any dependence between the tests."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional, got shape {p.shape}")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p_values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def input_drift(reference: Mapping[str, Any], current: Mapping[str, Any], *, alpha: float = 0.05,
                min_samples: int = 30) -> DriftResult:
    """Kolmogorov-Smirnov per feature (one 1-D array of values per name), Holm across features.

    Non-finite values are dropped per feature; a feature constant at the same value on both sides,
    or with fewer than `min_samples` values on a side, is skipped; a feature on one side only is
    ignored. Statistic: the largest D; p-value: the smallest Holm-adjusted p."""
    test, method = "input_drift", "ks+holm"
    names = [name for name in reference if name in current]
    details: dict[str, Any] = {"missing": {"reference": sorted(set(current) - set(reference)),
                                           "current": sorted(set(reference) - set(current))},
                               "features": {}, "skipped": {}}
    samples = {name: (_values(reference[name], f"reference[{name!r}]"), _values(current[name], f"current[{name!r}]"))
               for name in names}
    n_reference = max((len(ref) for ref, _ in samples.values()), default=0)
    n_current = max((len(cur) for _, cur in samples.values()), default=0)
    tested: dict[str, Any] = {}
    for name, (ref, cur) in samples.items():
        if min(len(ref), len(cur)) < min_samples:
            details["skipped"][name] = f"too few values: {len(ref)} reference, {len(cur)} current"
        elif ref.min() == ref.max() == cur.min() == cur.max():
            details["skipped"][name] = f"constant ({ref[0]:g}) on both sides"
        else:
            tested[name] = stats.ks_2samp(ref, cur)
    if not tested:
        return _too_few(test, method, alpha, n_reference, n_current, min_samples, details)
    adjusted = holm([float(result.pvalue) for result in tested.values()])
    for (name, result), p_adjusted in zip(tested.items(), adjusted):
        details["features"][name] = {"ks": float(result.statistic), "p": float(result.pvalue),
                                     "p_holm": float(p_adjusted)}
    return _verdict(test, method, alpha, n_reference, n_current, details,
                    {name: float(result.statistic) for name, result in tested.items()}, dict(zip(tested, adjusted)))


def representation_drift(reference: np.ndarray, current: np.ndarray, *, n_components: int = 32,
                         n_permutations: int = 500, seed: int = 0, max_reference: int = 1000, alpha: float = 0.05,
                         min_samples: int = 30) -> DriftResult:
    """MMD two-sample permutation test on the top principal components of the features (rows are
    samples), both standardised with reference statistics and projected on the reference's PCA.

    The reference (rows with a non-finite value dropped, subsampled to `max_reference`) is split in
    two at random: one half fits the standardisation and the PCA, the other is the test's reference
    sample; components fitted on the rows they are tested with overstate those rows' spread, and the
    test would fire on clean windows. Deterministic given `seed`. top_features: the components
    (`pc1`...) whose mean moved most, in reference standard deviations."""
    test = "representation_drift"
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.ndim != 2 or cur.ndim != 2:
        raise ValueError(f"reference and current must be 2-D (samples x features), got shapes {ref.shape} and "
                         f"{cur.shape}")
    if ref.shape[1] != cur.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} features per row and current {cur.shape[1]} "
                         f"(shapes {ref.shape} and {cur.shape})")
    if n_components < 1 or n_permutations < 1:
        raise ValueError(f"n_components and n_permutations must be >= 1, got {n_components} and {n_permutations}")
    rng = np.random.default_rng(seed)
    ref_finite, cur_finite = np.isfinite(ref).all(axis=1), np.isfinite(cur).all(axis=1)
    ref, cur = ref[ref_finite], cur[cur_finite]
    details: dict[str, Any] = {"dropped_rows": {"reference": int((~ref_finite).sum()),
                                                "current": int((~cur_finite).sum())}}
    if len(ref) > max_reference:
        ref = ref[np.sort(rng.choice(len(ref), size=max_reference, replace=False))]
        details["reference_subsampled_to"] = max_reference
    if min(len(ref), len(cur)) < min_samples:
        return _too_few(test, f"mmd-permutation(pca={n_components})", alpha, len(ref), len(cur), min_samples, details)

    order = rng.permutation(len(ref))
    fit, ref = ref[order[: len(ref) // 2]], ref[order[len(ref) // 2:]]
    mean, scale = fit.mean(axis=0), fit.std(axis=0)
    scale[scale < 1e-12] = 1.0
    axes, variances, total_variance = _principal_axes((fit - mean) / scale, n_components, rng)
    k = int((variances > variances[0] * 1e-10).sum()) if variances.size and variances[0] > 0 else 0
    axes = axes[:k]
    method = f"mmd-permutation(pca={k})"
    details.update({"fit_rows": len(fit), "test_reference_rows": len(ref)})
    if k == 0:
        return _too_few(test, method, alpha, len(fit) + len(ref), len(cur), min_samples, details,
                        message="no test: the reference features are constant")
    ref_pc, cur_pc = ((ref - mean) / scale) @ axes.T, ((cur - mean) / scale) @ axes.T
    statistic, p_value, bandwidth = _mmd_permutation_test(ref_pc, cur_pc, n_permutations, rng)
    spread = ref_pc.std(axis=0)
    shift = np.abs(cur_pc.mean(axis=0) - ref_pc.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    names = [f"pc{i + 1}" for i in range(k)]
    details.update({
        "n_components": k, "bandwidth": bandwidth, "n_permutations": n_permutations,
        "explained_variance_ratio": float(variances[:k].sum() / total_variance),
        "components": {name: {"mean_shift_sd": float(s)} for name, s in zip(names, shift)},
    })
    drifted = p_value < alpha
    top = _top(dict(zip(names, shift.tolist())))
    message = (f"drift: {', '.join(name for name, _ in top[:2])} moved most ({_p_text(p_value)})" if drifted
               else f"no drift ({_p_text(p_value)})")
    return DriftResult(test, method, statistic, p_value, alpha, drifted, len(fit) + len(ref), len(cur), top, message,
                       details)


def prediction_drift(reference: Mapping[str, Sequence], current: Mapping[str, Sequence], *, alpha: float = 0.05,
                     min_samples: int = 30) -> DriftResult:
    """Per prediction signal (values pooled over a window): chi-square test of homogeneity when its
    values are strings or bools (with the population stability index in details), KS when numeric;
    Holm across signals. Statistic: the largest per-signal effect (Cramer's V or KS D).

    A signal with fewer than `min_samples` values on a side, or one value on both, is skipped."""
    test, method = "prediction_drift", "chi2+ks+holm"
    names = [name for name in reference if name in current]
    details: dict[str, Any] = {"missing": {"reference": sorted(set(current) - set(reference)),
                                           "current": sorted(set(reference) - set(current))},
                               "signals": {}, "skipped": {}}
    counts = {name: (_count(reference[name]), _count(current[name])) for name in names}
    n_reference = max((ref for ref, _ in counts.values()), default=0)
    n_current = max((cur for _, cur in counts.values()), default=0)
    effects: dict[str, float] = {}
    p_values: dict[str, float] = {}
    for name in names:
        ref, cur = reference[name], current[name]
        if min(counts[name]) < min_samples:
            details["skipped"][name] = f"too few values: {counts[name][0]} reference, {counts[name][1]} current"
            continue
        if _is_categorical(ref) or _is_categorical(cur):
            row = _categorical_test(ref, cur)
        else:
            row = _numeric_test(_values(ref, f"reference[{name!r}]"), _values(cur, f"current[{name!r}]"), min_samples)
        if "skipped" in row:
            details["skipped"][name] = row["skipped"]
            continue
        details["signals"][name] = row
        effects[name], p_values[name] = row["effect"], row["p"]
    if not effects:
        return _too_few(test, method, alpha, n_reference, n_current, min_samples, details)
    adjusted = dict(zip(p_values, holm(list(p_values.values()))))
    for name, p_adjusted in adjusted.items():
        details["signals"][name]["p_holm"] = float(p_adjusted)
    details["statistic_signal"] = max(effects, key=effects.get)
    return _verdict(test, method, alpha, n_reference, n_current, details, effects, adjusted)


def _values(values: Any, argument: str) -> np.ndarray:
    """The finite values of one feature as a 1-D float array."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{argument} must be one-dimensional (one value per sample), got shape {array.shape}")
    return array[np.isfinite(array)]


def _count(values: Sequence) -> int:
    return sum(1 for value in values if value is not None)


def _is_categorical(values: Sequence) -> bool:
    return any(isinstance(value, (str, bool, np.str_, np.bool_)) for value in values)


def _categorical_test(reference: Sequence, current: Sequence) -> dict[str, Any]:
    """Chi-square test of homogeneity on the 2 x K table over the union of categories."""
    ref = [str(value) for value in reference if value is not None]
    cur = [str(value) for value in current if value is not None]
    categories = sorted(set(ref) | set(cur))
    if len(categories) < 2:
        return {"skipped": f"one category ({categories[0]!r}) on both sides"}
    index = {category: i for i, category in enumerate(categories)}
    table = np.zeros((2, len(categories)))
    np.add.at(table[0], [index[value] for value in ref], 1)
    np.add.at(table[1], [index[value] for value in cur], 1)
    result = stats.chi2_contingency(table, correction=False)
    shares = np.maximum(table / table.sum(axis=1, keepdims=True), _PSI_EPSILON)
    psi = float(((shares[1] - shares[0]) * np.log(shares[1] / shares[0])).sum())
    return {"kind": "categorical", "test": "chi2", "chi2": float(result.statistic), "dof": int(result.dof),
            "p": float(result.pvalue), "effect": math.sqrt(float(result.statistic) / table.sum()), "psi": psi,
            "reference_share": dict(zip(categories, (table[0] / table[0].sum()).round(4).tolist())),
            "current_share": dict(zip(categories, (table[1] / table[1].sum()).round(4).tolist()))}


def _numeric_test(ref: np.ndarray, cur: np.ndarray, min_samples: int) -> dict[str, Any]:
    if min(len(ref), len(cur)) < min_samples:
        return {"skipped": f"too few finite values: {len(ref)} reference, {len(cur)} current"}
    if ref.min() == ref.max() == cur.min() == cur.max():
        return {"skipped": f"constant ({ref[0]:g}) on both sides"}
    result = stats.ks_2samp(ref, cur)
    return {"kind": "numeric", "test": "ks", "ks": float(result.statistic), "p": float(result.pvalue),
            "effect": float(result.statistic)}


def _principal_axes(x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """The top `k` principal axes (rows) of centred `x`, their variances and the total variance.

    A randomised range finder with power iterations (Halko, Martinsson and Tropp, 2011) made of
    matrix products and small factorisations only: LAPACK's QR, SVD and eigensolvers on the full
    matrix slow down a hundredfold when their threads share busy cores. The test is exact whatever
    axes it is given; they only decide what it looks at."""
    rows = x.shape[0]
    basis = x @ rng.standard_normal((x.shape[1], min(k + 10, *x.shape)))
    for _ in range(2):
        basis = x @ (x.T @ _orthonormal(basis))
    projected = _orthonormal(basis).T @ x
    values, vectors = np.linalg.eigh(projected @ projected.T)
    order = np.argsort(values)[::-1][:k]
    values = np.maximum(values[order], 0.0)
    axes = (vectors[:, order].T @ projected) / np.where(values > 0, np.sqrt(values), 1.0)[:, None]
    return axes, values / rows, float((x * x).sum()) / rows


def _orthonormal(basis: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the column span of a tall `basis`, through the eigendecomposition of
    its small Gram matrix (directions it barely spans are dropped)."""
    values, vectors = np.linalg.eigh(basis.T @ basis)
    keep = values > max(values[-1], 0.0) * 1e-12
    return basis @ (vectors[:, keep] / np.sqrt(values[keep]))


def _mmd_permutation_test(x: np.ndarray, y: np.ndarray, n_permutations: int,
                          rng: np.random.Generator) -> tuple[float, float, float]:
    """Unbiased MMD^2 of `x` against `y`, its permutation p-value and the kernel bandwidth.

    The pooled kernel matrix is computed once; every permutation is a 0/1 membership column, so all
    of them cost one matrix product: for membership a of y, a'Ka sums K over y pairs, a'r - a'Ka
    over cross pairs (r: row sums), and the rest over x pairs."""
    pooled = np.concatenate([x, y])
    total, m, n = len(pooled), len(x), len(y)
    squared = np.einsum("ij,ij->i", pooled, pooled)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2.0 * pooled @ pooled.T, 0.0)
    upper = distances[np.triu_indices(total, k=1)]
    bandwidth = math.sqrt(float(np.median(upper)))
    if bandwidth <= 0:
        bandwidth = math.sqrt(float(upper.mean())) or 1.0
    kernel = np.exp(distances / (-2.0 * bandwidth ** 2))
    np.fill_diagonal(kernel, 0.0)
    row_sums = kernel.sum(axis=1)
    everything = row_sums.sum()
    membership = np.zeros((total, n_permutations + 1))
    membership[m:, 0] = 1.0
    chosen = rng.random((n_permutations, total)).argsort(axis=1)[:, :n]
    membership[chosen, np.arange(1, n_permutations + 1)[:, None]] = 1.0
    within_y = np.einsum("ip,ip->p", membership, kernel @ membership)
    y_row_sums = row_sums @ membership
    cross = y_row_sums - within_y
    within_x = everything - 2.0 * y_row_sums + within_y
    mmd2 = within_x / (m * (m - 1)) + within_y / (n * (n - 1)) - 2.0 * cross / (m * n)
    observed = float(mmd2[0])
    p_value = float((1 + np.count_nonzero(mmd2[1:] >= observed - 1e-12 * abs(observed))) / (1 + n_permutations))
    return observed, p_value, bandwidth


def _verdict(test: str, method: str, alpha: float, n_reference: int, n_current: int, details: dict,
             scores: dict[str, float], adjusted: dict[str, float]) -> DriftResult:
    """The result of a Holm-corrected family: drift when the smallest adjusted p is below alpha."""
    p_value = float(min(adjusted.values()))
    drifted = p_value < alpha
    top = _top(scores)
    if drifted:
        moved = [name for name, _ in _top(scores, len(scores)) if adjusted[name] < alpha][:3]
        message = f"drift: {', '.join(moved)} moved most ({_p_text(p_value)})"
    else:
        message = f"no drift ({_p_text(p_value)})"
    return DriftResult(test, method, float(max(scores.values())), p_value, alpha, drifted, n_reference, n_current,
                       top, message, details)


def _too_few(test: str, method: str, alpha: float, n_reference: int, n_current: int, min_samples: int,
             details: dict, message: str | None = None) -> DriftResult:
    if message is None:
        sides = [f"{n} {side}" for n, side in ((n_reference, "reference"), (n_current, "current")) if n < min_samples]
        message = f"too few samples: {', '.join(sides) or 'no feature with enough values'}, need {min_samples}"
    return DriftResult(test, method, None, None, alpha, None, n_reference, n_current, [], message, details)


def _top(scores: dict[str, float], limit: int = _TOP) -> list[tuple[str, float]]:
    return sorted(((name, float(score)) for name, score in scores.items()), key=lambda item: -item[1])[:limit]


def _p_text(p_value: float) -> str:
    return "p<1e-6" if p_value < 1e-6 else f"p={p_value:.2g}"
