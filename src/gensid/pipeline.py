"""A run end to end (two-stage or joint), and loading a finished run.

This module only re-exports, for scripts, tests and benchmarks; the code is in:

- :mod:`gensid.run`: :class:`Run` (a run in memory, ranking items), its folder's files and config,
  and loading its trained weights (:func:`with_weights`, :func:`load_fitting_weights`);
- :mod:`gensid.prepare`: data and splits, text vectors, tokenizer and SIDs, the untrained model
  (:func:`prepare`, :func:`assemble`), warm starts and learned indexes, and :func:`load_run`;
- :mod:`gensid.training`: :func:`train_run`;
- :mod:`gensid.evaluation`: a trained run's metrics, test analysis and ``test_ranks.json``.

Library code imports from those modules.
"""

from gensid.evaluation import (
    evaluate_split,
    popularity_metrics,
    save_test_ranks,
    split_digest,
    subset_metrics,
    test_analysis,
    training_popularity,
)
from gensid.prepare import (
    ITEM_SIDE,
    ITEM_SIDE_FILES,
    assemble,
    check_inputs,
    copy_item_side,
    finished_source,
    item_text_vectors,
    learned_index_source,
    learned_semantic_ids,
    load_init_weights,
    load_run,
    load_task,
    prepare,
    product_codes,
    tokenizer_and_sids,
)
from gensid.run import (
    LAYER_FIELDS,
    SHAPE_FIELDS,
    Run,
    load_fitting_weights,
    locate_data,
    run_config,
    run_files,
    top_k,
    with_weights,
)
from gensid.training import train_run, validation_subset

__all__ = [
    "ITEM_SIDE", "ITEM_SIDE_FILES", "LAYER_FIELDS", "SHAPE_FIELDS", "Run", "assemble", "check_inputs",
    "copy_item_side", "evaluate_split", "finished_source", "item_text_vectors", "learned_index_source",
    "learned_semantic_ids", "load_fitting_weights", "load_init_weights", "load_run", "load_task", "locate_data",
    "popularity_metrics", "prepare", "product_codes", "run_config", "run_files", "save_test_ranks", "split_digest",
    "subset_metrics", "test_analysis", "tokenizer_and_sids", "top_k", "train_run", "training_popularity",
    "validation_subset", "with_weights",
]
