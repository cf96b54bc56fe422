"""Paired per-user comparison of two systems on the same test users.

Every test user contributes one difference ``treatment - control`` of its hit@K or ndcg@K.
With several pairs of runs (e.g. one pair per source seed) each user's difference is
averaged over the pairs first, so a user counts once. Two statistics on those differences:
a 95% bootstrap interval of their mean (users resampled) and the two-sided p-value of a paired
randomization test (each user's sign flipped at random), as Smucker, Allan and Carterette (2007)
recommend for IR. Both treat the trained models as fixed: they say whether the gap is larger than
test-set sampling noise, not whether another training seed would reproduce it. For that, a t-test
of the pairs' mean differences (``across_pairs``), which in turn treats the test users as fixed.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def per_user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """ranks [N] (0-based, -1 = not found) -> [N] per-user ``hit@K`` or ``ndcg@K`` (1 target per user)."""
    name, _, k = metric.partition("@")
    if name not in ("hit", "recall", "ndcg") or not k.isdigit():
        raise ValueError(f"metric {metric!r}: expected hit@K, recall@K or ndcg@K")
    ranks = np.asarray(ranks)
    within = (ranks >= 0) & (ranks < int(k))
    if name in ("hit", "recall"):
        return within.astype(np.float64)
    return np.where(within, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)  # ndcg


def paired_test(differences: np.ndarray, resamples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """differences [N] per-user treatment - control -> mean, 95% bootstrap interval, randomization p."""
    differences = np.asarray(differences, dtype=np.float64)
    rng = np.random.default_rng(seed)
    mean = float(differences.mean())
    if not differences.any():  # identical systems: nothing to resample
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "p_value": 1.0}
    ci = stats.bootstrap((differences,), np.mean, n_resamples=resamples, confidence_level=0.95,
                         method="percentile", random_state=rng).confidence_interval
    # sign-flip test: under "no difference" each user's difference is as likely to have either sign
    flips = stats.permutation_test((differences,), np.mean, permutation_type="samples",
                                   n_resamples=resamples, alternative="two-sided", random_state=rng,
                                   vectorized=True, axis=-1)
    return {"mean": mean, "ci_low": float(ci.low), "ci_high": float(ci.high), "p_value": float(flips.pvalue)}


def across_pairs(pair_means: np.ndarray) -> dict[str, float]:
    """pair_means [P] each pair's mean difference -> two-sided one-sample t-test over the pairs:
    does the gap repeat across training seeds on this test set (p is nan with one pair)."""
    pair_means = np.asarray(pair_means, dtype=np.float64)
    if len(pair_means) < 2:
        p = float("nan")
    elif np.ptp(pair_means) == 0:  # no spread: the t statistic is undefined
        p = 1.0 if pair_means[0] == 0 else 0.0
    else:
        p = float(stats.ttest_1samp(pair_means, 0.0).pvalue)
    return {"pairs": len(pair_means), "p_value": p}


def compare_ranks(control: list[np.ndarray], treatment: list[np.ndarray], metrics: list[str],
                  resamples: int = 10_000, seed: int = 0) -> dict[str, dict]:
    """Pairs of per-user rank arrays (control[i] against treatment[i], each [N] on the same users)
    -> per metric: each side's mean over pairs and users, the users' paired test over all pairs
    (``pooled``), each pair's own test (``pairs``), a t-test of the pairs' mean differences
    (``across_pairs``), and in how many (pair, user) cases each side scores higher
    (``treatment_better`` / ``control_better``)."""
    if len(control) != len(treatment) or not control:
        raise ValueError(f"{len(control)} control and {len(treatment)} treatment runs: give them in pairs")
    sizes = {len(r) for r in control + treatment}
    if len(sizes) != 1:
        raise ValueError(f"the runs rank different numbers of test users: {sorted(sizes)}")
    out = {}
    for metric in metrics:
        control_scores = np.stack([per_user_metric(c, metric) for c in control])  # [pairs, N]
        diffs = np.stack([per_user_metric(t, metric) for t in treatment]) - control_scores
        out[metric] = {
            "control": float(control_scores.mean()),
            "treatment": float((control_scores + diffs).mean()),
            "pooled": paired_test(diffs.mean(0), resamples, seed),
            "pairs": [paired_test(d, resamples, seed) for d in diffs],
            "across_pairs": across_pairs(diffs.mean(1)),
            "treatment_better": int((diffs > 0).sum()),
            "control_better": int((diffs < 0).sum()),
        }
    return out
