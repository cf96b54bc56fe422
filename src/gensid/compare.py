"""Is one system better than another on the same test users? A paired per-user test of two runs
(or baselines, or hybrids) from their saved test ranks (``test_ranks.json``), over one run each or
several seeds paired up; optionally within each item-popularity bucket of the targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gensid.errors import InputError, RunError
from gensid.eval.analysis import popularity_buckets
from gensid.eval.significance import compare_ranks, parse_metric
from gensid.evaluation import read_test_ranks, save_test_ranks, split_digest, training_popularity
from gensid.fusion.hybrid import hybrid_run_dir
from gensid.prepare import load_run, load_task
from gensid.run import run_config


def load_test_ranks(run_dir: str | Path, progress: bool = False) -> tuple[np.ndarray, str, int]:
    """(ranks [N], test-split digest, ranked-list depth) of a run's test users, from its
    ``test_ranks.json``; a run without that file is loaded and ranked once, and the file written."""
    saved = read_test_ranks(run_dir)
    if saved is None:
        run = load_run(run_dir)
        test = run.splits.test
        save_test_ranks(run_dir, test, run.target_ranks(test, run.split_queries("test"), progress),
                        run.cfg.eval.beam_size)
        saved = read_test_ranks(run_dir)
    return saved["ranks"], saved["test_users"], saved["depth"]


def target_popularity_buckets(run_dirs: list[str], digest: str) -> np.ndarray:
    """Item-popularity bucket (0 = head .. 4 = tail, as in the test analysis) of each test user's
    target [N], from the data of the first of ``run_dirs`` that is a gensid run (has a config) or a
    hybrid of one (:mod:`gensid.fusion.hybrid`)."""
    for run_dir in run_dirs:
        source = Path(hybrid_run_dir(run_dir) or run_dir)
        if (source / "config.yaml").exists():
            _, dataset, splits, _ = load_task(run_config(source), progress=False)
            if split_digest(splits.test, splits.new_targets(splits.test)) != digest:
                raise RunError(f"{source / 'config.yaml'}: its data no longer gives the test users it was ranked on "
                               "(the data files changed?)")
            return popularity_buckets(training_popularity(splits, len(dataset.catalog)))[splits.test.targets]
    raise InputError(f"{', '.join(run_dirs)}: a test by popularity needs the data of a gensid run "
                     "(a run directory with config.yaml); these are all baselines")


def subset_users(run_dir: str | Path, subset: str) -> np.ndarray:
    """[N] bool: the test users of ``subset`` (``new``: whose target is a new item of a cold-start
    split; ``seen``: the others), from the run's ``test_ranks.json``."""
    saved = read_test_ranks(run_dir)
    if "new_targets" not in saved:
        raise InputError(f"{Path(run_dir) / 'test_ranks.json'}: --subset {subset} needs a run on a cold-start split (data.split cold_start)")
    new = np.zeros(len(saved["ranks"]), dtype=bool)
    new[saved["new_targets"]] = True
    return new if subset == "new" else ~new


def compare_runs(control: str, treatment: str, seeds: list[str], metrics: list[str], resamples: int = 10_000,
                 progress: bool = False, by_popularity: bool = False, subset: str = "all") -> dict:
    """Paired per-user test (``eval.significance.compare_ranks``) of the run ``treatment`` against
    ``control``; with ``seeds``, each side is a pattern whose ``{seed}`` names one run per seed
    and the runs pair up seed by seed. Returns the inputs, the pairs and the test per metric;
    with ``by_popularity`` also the test within each item-popularity bucket of the targets.
    ``subset`` (a cold-start split): ``new`` or ``seen`` tests only the users whose target is a new
    item, or the others; ``all`` every user."""
    if subset not in ("all", "new", "seen"):
        raise InputError(f"--subset {subset!r}: expected all, new or seen")
    if ("{seed}" in control + treatment) != bool(seeds):
        raise InputError("use '{seed}' in the run directories together with seeds, or neither")
    pairs = [(control.replace("{seed}", s), treatment.replace("{seed}", s)) for s in seeds or [""]]
    ranks, digests, depths = {}, set(), {}
    for run_dir in dict.fromkeys(d for pair in pairs for d in pair):
        ranks[run_dir], digest, depths[run_dir] = load_test_ranks(run_dir, progress)
        digests.add(digest)
    if len(digests) != 1:
        raise InputError(f"{control} and {treatment}: the runs are not evaluated on the same test users "
                         "(different data or split)")
    in_subset = subset_users(pairs[0][0], subset) if subset != "all" else None  # same digest: same new targets
    if in_subset is not None:
        ranks = {run_dir: r[in_subset] for run_dir, r in ranks.items()}
    check_depths(metrics, depths)
    tests = paired_tests(ranks, pairs, metrics, resamples)
    result = {"control": control, "treatment": treatment, "seeds": seeds, "pairs": pairs, "subset": subset,
              "test_users": len(ranks[pairs[0][0]]), "resamples": resamples, "metrics": tests}
    if by_popularity:
        bucket = target_popularity_buckets(list(ranks), digests.pop())
        bucket = bucket if in_subset is None else bucket[in_subset]
        result["by_popularity"] = [
            {"bucket": int(b), "test_users": int((bucket == b).sum()),
             "metrics": paired_tests({d: r[bucket == b] for d, r in ranks.items()}, pairs, metrics, resamples)}
            for b in np.unique(bucket)]
    return result


def check_depths(metrics: list[str], depths: dict[str, int]) -> None:
    """``InputError`` when a metric's K is deeper than the shallowest ranked lists of ``depths``
    ({run: depth})."""
    shallowest = min(depths, key=depths.get)
    for metric in metrics:
        try:
            k = parse_metric(metric)[1]
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if k > depths[shallowest]:
            raise InputError(f"{metric}: {shallowest} ranks only its top {depths[shallowest]} items (a gensid "
                             f"run: eval.beam_size), so K can be at most {depths[shallowest]}")


def paired_tests(ranks: dict[str, np.ndarray], pairs: list[tuple[str, str]], metrics: list[str],
                 resamples: int) -> dict:
    """``eval.significance.compare_ranks`` of the ``pairs`` (control, treatment) of runs, from their
    ranks {run: [N]}."""
    try:
        return compare_ranks([ranks[c] for c, _ in pairs], [ranks[t] for _, t in pairs], metrics, resamples)
    except ValueError as exc:
        raise InputError(str(exc)) from None
