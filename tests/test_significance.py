import json

import numpy as np
import pytest

from gensid.compare import compare_runs
from gensid.errors import InputError, RunError
from gensid.eval.significance import across_pairs, compare_ranks, paired_test, per_user_metric


def test_per_user_metric_hand_case():
    ranks = np.array([0, 2, 9, 10, -1])
    assert per_user_metric(ranks, "hit@10").tolist() == [1, 1, 1, 0, 0]
    assert per_user_metric(ranks, "ndcg@10") == pytest.approx([1, 1 / np.log2(4), 1 / np.log2(11), 0, 0])
    for bad in ("mrr@10", "ndcg", "hit@ten"):
        with pytest.raises(ValueError, match=f"metric '{bad}'"):
            per_user_metric(ranks, bad)


def test_randomization_p_value_is_exact_on_a_hand_case():
    # five users, all better by 1: of the 2^5 sign flips only "all +" and "all -" reach |mean| = 1
    result = paired_test(np.ones(5))
    assert result["mean"] == 1.0
    assert result["p_value"] == pytest.approx(2 / 32)
    # +1, +1, +1, -1 and two ties: of 16 sign patterns the 6 with two + and two - sum to 0 < 2
    assert paired_test(np.array([1.0, 1, 1, -1, 0, 0]))["p_value"] == pytest.approx(10 / 16)


def test_resampling_per_value_agrees_with_scipys_user_by_user_resampling():
    from scipy import stats

    rng = np.random.default_rng(1)
    for differences in (rng.choice([-1.0, 0, 0, 0, 0, 1, 1], 600),  # hit@K, one pair
                        rng.choice([-1, -2 / 3, -1 / 3, 0, 0, 0, 1 / 3, 2 / 3, 1], 600),  # averaged over 3 pairs
                        np.round(rng.normal(0.02, 0.3, 600), 2)):  # ndcg-like: many values
        ours = paired_test(differences)
        interval = stats.bootstrap((differences,), np.mean, n_resamples=10_000, method="percentile",
                                   random_state=0).confidence_interval
        p = stats.permutation_test((differences,), np.mean, permutation_type="samples", n_resamples=10_000,
                                   vectorized=True, random_state=0).pvalue
        assert ours["ci_low"] == pytest.approx(interval.low, abs=0.004)
        assert ours["ci_high"] == pytest.approx(interval.high, abs=0.004)
        assert ours["p_value"] == pytest.approx(p, abs=0.03)  # two Monte Carlo estimates of one p


def test_identical_systems_have_no_difference():
    assert paired_test(np.zeros(100)) == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}


def test_a_clear_gain_is_significant_and_noise_is_not():
    rng = np.random.default_rng(0)
    noise = rng.choice([-1.0, 0.0, 1.0], size=2000)
    gain = np.where(rng.random(2000) < 0.1, 1.0, noise)  # 10% of users flip to a hit
    assert paired_test(gain)["p_value"] < 0.001
    result = paired_test(noise)
    assert result["p_value"] > 0.05 and result["ci_low"] < result["mean"] < result["ci_high"]


def test_compare_ranks_averages_each_user_over_pairs():
    control = [np.array([0, -1, 3, -1]), np.array([0, -1, -1, 1])]
    treatment = [np.array([0, 2, -1, 1]), np.array([0, 4, -1, 1])]
    result = compare_ranks(control, treatment, ["hit@5"], resamples=1000)["hit@5"]
    assert result["control"] == pytest.approx(4 / 8) and result["treatment"] == pytest.approx(6 / 8)
    # per-user differences averaged over the two pairs: 0, +1, -0.5, +0.5
    assert result["pooled"]["mean"] == pytest.approx(0.25)
    assert [p["mean"] for p in result["pairs"]] == pytest.approx([0.25, 0.25])
    assert (result["treatment_better"], result["control_better"]) == (3, 1)
    assert result["across_pairs"] == {"pairs": 2, "p_value": 0.0}  # both pairs +0.25: no spread

    with pytest.raises(ValueError, match="in pairs"):
        compare_ranks(control, treatment[:1], ["hit@5"])
    with pytest.raises(ValueError, match="different numbers of test users"):
        compare_ranks([control[0]], [np.array([0, 1])], ["hit@5"])



def test_across_pairs_is_a_t_test_over_the_pairs():
    # hand case: means 1, 2, 3 -> t = 2 / (1 / sqrt(3)) = 3.464 with 2 degrees of freedom, p = 0.0742
    assert across_pairs(np.array([1.0, 2.0, 3.0]))["p_value"] == pytest.approx(0.0742, abs=1e-4)
    assert np.isnan(across_pairs(np.array([0.5]))["p_value"])
    assert across_pairs(np.zeros(3))["p_value"] == 1.0


def test_compare_runs_names_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match="together with seeds"):
        compare_runs("runs/a-s{seed}", "runs/b-s{seed}", [], ["hit@10"])
    with pytest.raises(RunError, match="not a run directory"):
        compare_runs(str(tmp_path / "a"), str(tmp_path / "b"), [], ["hit@10"])
    for name, digest, depth in (("a-s1", "x", 20), ("b-s1", "x", 20), ("b-s2", "x", 20), ("c-s1", "y", 20),
                                ("d-s1", "x", 5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test_ranks.json").write_text(
            json.dumps({"test_users": digest, "depth": depth, "ranks": [0, -1, 3]}))
    with pytest.raises(InputError, match="not evaluated on the same test users"):
        compare_runs(str(tmp_path / "a-s{seed}"), str(tmp_path / "c-s{seed}"), ["1"], ["hit@10"])
    with pytest.raises(InputError, match="mrr@10"):
        compare_runs(str(tmp_path / "a-s{seed}"), str(tmp_path / "b-s{seed}"), ["1"], ["mrr@10"])
    with pytest.raises(InputError, match=r"hit@10: .*d-s1 ranks only its top 5"):  # ranks past 5 are unknown
        compare_runs(str(tmp_path / "a-s{seed}"), str(tmp_path / "d-s{seed}"), ["1"], ["hit@5", "hit@10"])
    with pytest.raises(InputError, match="needs the data of a gensid run"):  # baselines keep no config
        compare_runs(str(tmp_path / "a-s{seed}"), str(tmp_path / "b-s{seed}"), ["1"], ["hit@10"], by_popularity=True)
    same = compare_runs(str(tmp_path / "a-s{seed}"), str(tmp_path / "b-s{seed}"), ["1"], ["hit@10"])
    assert same["pairs"] == [(str(tmp_path / "a-s1"), str(tmp_path / "b-s1"))] and same["test_users"] == 3
    assert same["metrics"]["hit@10"]["pooled"]["p_value"] == 1.0
    # one run (a baseline with one seed) against each seed of the other side
    one = compare_runs(str(tmp_path / "a-s1"), str(tmp_path / "b-s{seed}"), ["1", "2"], ["hit@10"])
    assert one["pairs"] == [(str(tmp_path / "a-s1"), str(tmp_path / f"b-s{s}")) for s in ("1", "2")]
