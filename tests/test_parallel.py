"""The parallel-SID method (RPG): product-quantized digits, the causal model, its loss and exact
full-catalog scoring."""

import json
import warnings

import numpy as np
import pytest
import torch

from conftest import tiny_ml100k
from gensid.config import ModelConfig, ParallelConfig, load_config
from gensid.data.catalog import Interactions
from gensid.data.splits import leave_one_out, sequence_windows
from gensid.errors import ConfigError, GensidWarning
from gensid.eval.calibration import fit_new_item_offset, new_item_share
from gensid.eval.evaluate import rank_exact
from gensid.fusion.mixture import fused_rankings
from gensid.model.parallel import ParallelSIDRecommender, score_items, top_items
from gensid.pipeline import Run, load_run, train_run
from gensid.quantize.product import ProductQuantizer
from gensid.train.batches import Batch, ItemFeatures

M, K = 4, 16


def small_model(history_input: str = "codes", text_dim: int | None = None, head: str = "digits"
                ) -> ParallelSIDRecommender:
    cfg = ModelConfig(d_model=32, n_heads=4, encoder_layers=2, d_ff=64, dropout=0.0, history_input=history_input)
    parallel = ParallelConfig(embedding_dropout=0.0, attention_dropout=0.0, head=head)
    return ParallelSIDRecommender(M, K, cfg, parallel, max_history=6, text_dim=text_dim).eval()


def test_exact_scores_equal_brute_force_per_item(rng):
    log_probs = torch.randn(3, M, K).log_softmax(-1)
    codes = torch.from_numpy(rng.integers(0, K, (50, M)))
    brute = torch.stack([torch.stack([sum(log_probs[b, j, codes[i, j]] for j in range(M)) for i in range(50)])
                         for b in range(3)])
    assert torch.allclose(score_items(log_probs, codes), brute, atol=1e-5)
    # the embedding_bag path (more than 2^24 gathered entries) gives the same scores
    many = torch.randn(700, M, K).log_softmax(-1)
    codes = torch.from_numpy(rng.integers(0, K, (6000, M)))
    one_by_one = torch.cat([score_items(many[i:i + 1], codes) for i in range(700)])
    assert torch.allclose(score_items(many, codes), one_by_one, atol=1e-4)


def test_chunked_top_k_equals_ranking_every_item(rng):
    log_probs = torch.randn(5, M, K).log_softmax(-1)
    codes = torch.from_numpy(rng.integers(0, K, (300, M)))
    scores, ids = top_items(lambda a, b: score_items(log_probs, codes[a:b]), 300, k=20, chunk=37)  # 9 chunks
    full = score_items(log_probs, codes)
    expected_scores, expected_ids = full.topk(20, dim=1)
    assert torch.allclose(scores, expected_scores)
    assert torch.equal(full.gather(1, ids), scores)  # the ids carry their scores (ties may swap ids)
    assert (ids >= 0).all() and (ids < 300).all()


def test_multi_token_loss_reaches_every_head_and_digit_table():
    torch.manual_seed(0)
    model = small_model().train()
    codes = torch.randint(0, K, (8, 6, M))
    mask = torch.ones(8, 6, dtype=torch.bool)
    mask[:4, :3] = False
    hidden = model.encode(codes, mask)
    model.loss(model.digit_logits(hidden[mask]), torch.randint(0, K, (int(mask.sum()), M))).backward()
    head_grads = model.head_weight.grad.abs().sum(dim=(0, 2))  # [m]: one sum per digit head
    assert (head_grads > 0).all()
    assert (model.head_bias.grad.abs().sum(1) > 0).all()
    table_grads = model.digit_embeddings.weight.grad.view(M, K, -1).abs().sum(-1)
    assert (table_grads > 0).all()  # every code's row: input embedding or output logit


def test_causal_and_independent_of_left_padding():
    torch.manual_seed(0)
    model = small_model()
    codes = torch.randint(0, K, (1, 6, M))
    full = torch.ones(1, 6, dtype=torch.bool)
    hidden = model.encode(codes, full)
    changed = codes.clone()
    changed[0, 5] = (changed[0, 5] + 1) % K  # a later item must not change earlier positions
    assert torch.allclose(model.encode(changed, full)[0, :5], hidden[0, :5], atol=1e-6)
    # the same 3-item history, left-padded by 3 slots of any content, gives the same last state
    padded, mask = torch.randint(0, K, (1, 6, M)), torch.tensor([[False] * 3 + [True] * 3])
    padded[0, 3:] = codes[0, :3]
    alone = model.encode(codes[:, :3], full[:, :3])[0, -1]
    assert torch.allclose(model.encode(padded, mask)[0, -1], alone, atol=1e-5)


def test_text_input_changes_the_item_tokens_and_the_shared_heads_scores():
    model = small_model("codes+text", text_dim=12)
    codes, text = torch.randint(0, K, (2, 3, M)), torch.randn(2, 3, 12)
    assert not torch.allclose(model.item_vectors(codes, text=text), model.item_vectors(codes, text=torch.zeros_like(text)))
    with pytest.raises(ValueError, match="text vectors"):
        model.item_vectors(codes)
    shared = small_model("codes+text", text_dim=12, head="shared")
    codes, text, states = torch.randint(0, K, (5, M)), torch.randn(5, 12), torch.randn(3, 32)
    digits_only = shared.digit_embeddings(codes + shared.offsets).mean(1)
    # tied: an item's score is the dot product with its history token, text projection included
    assert torch.allclose(shared.catalog_scores(states, shared.item_table(codes, None, text)),
                          states @ (digits_only + shared.text_proj(text)).T, atol=1e-6)
    with pytest.raises(ConfigError, match="history_input"):
        small_model("quantized")


def test_windows_cover_every_training_target_once():
    sequences = [np.arange(n) + 100 * u for u, n in enumerate([2, 3, 5, 9, 30, 47])]
    interactions = Interactions([str(u) for u in range(len(sequences))], sequences)
    windows = sequence_windows(interactions, max_history=4)
    prefixes = leave_one_out(interactions, max_history=4).train
    # every target a window's positions predict: the history items after the first, then the target
    predicted = []
    for hist, target in zip(windows.histories, windows.targets, strict=True):
        real = hist[hist >= 0]
        predicted += [*real[1:], target]
    assert sorted(predicted) == sorted(prefixes.targets.tolist())
    assert ((windows.histories >= 0).sum(1) >= 1).all()


def test_product_quantizer_round_trip_and_errors(tmp_path, rng):
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    quantizer = ProductQuantizer.fit(vectors, digits=4, codebook_size=16, opq=False)
    codes = quantizer.encode(vectors)
    assert codes.shape == (600, 4) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 16 and len(np.unique(codes[:, 0])) > 8
    quantizer.save(tmp_path / "pq.safetensors")
    assert np.array_equal(ProductQuantizer.load(tmp_path / "pq.safetensors").encode(vectors), codes)
    # the 4-bit digits are the nearest centroid of each 4-dimensional slice
    centroids = __import__("faiss").vector_to_array(quantizer.index.pq.centroids).reshape(4, 16, 4)
    nearest = np.stack([((vectors[:, None, 4 * j:4 * j + 4] - centroids[j][None]) ** 2).sum(-1).argmin(1)
                        for j in range(4)], 1)
    assert (nearest == codes).mean() > 0.99
    with pytest.raises(ConfigError, match="divide"):
        ProductQuantizer.fit(vectors, digits=5)
    with pytest.raises(ConfigError, match="power of two"):
        ProductQuantizer.fit(vectors, digits=4, codebook_size=12)


@pytest.mark.slow
def test_parallel_run_on_movielens(tmp_path):
    overrides = [o for o in tiny_ml100k(epochs=2) if not o.startswith(("quantizer", "model.decoder"))]
    cfg = load_config("configs/ml100k.yaml", [*overrides, "data.max_users=200", "method=parallel",
                                              "parallel.digits=8", "parallel.codebook_size=16",
                                              "parallel.opq=false", "model.history_input=codes"])
    metrics = train_run(cfg, tmp_path, progress=False)
    assert metrics["epochs"] == 2 and metrics["sid"]["digits"] == 8
    ranks = json.loads((tmp_path / "test_ranks.json").read_text())
    assert len(ranks["ranks"]) == len(load_run(tmp_path).splits.test)
    run = load_run(tmp_path)
    recs = run.recommend([0, 1, 2], k=10)
    assert len(set(recs)) == 10 and all(0 <= i < len(run.dataset.catalog) for i in recs)
    test = run.splits.test.head(16)
    ranked = run.rank(test)
    assert (ranked >= 0).all() and len(np.unique(ranked[0])) == ranked.shape[1]
    # the hybrid's mixture: weight 0 is the run's own ranking, weight 1 the other scorer's
    n = len(run.dataset.catalog)
    favourite = torch.full((n,), -20.0).index_fill(0, torch.arange(10), 0.0).log_softmax(-1)
    mixed = fused_rankings(run, test, None, lambda rows: favourite.expand(len(rows), -1), [0.0, 1.0])
    batch = Batch.build(test, slice(None), run.items)
    states = run.model.user_states(batch.history_codes, batch.history_mask, batch.history_text, batch.history_items)
    exact = run.model.catalog_scores(states, run.item_table())
    # the same scores in the same order (items whose scores tie within rounding may swap)
    assert torch.allclose(exact.gather(1, torch.from_numpy(mixed[0.0])), exact.gather(1, torch.from_numpy(ranked)),
                          atol=1e-4)
    assert set(mixed[1.0][0, :10].tolist()) == set(range(10))


@pytest.mark.parametrize("head", ["digits", "shared"])
def test_item_softmax_over_every_item_is_the_cross_entropy_of_the_ranking_scores(rng, head):
    torch.manual_seed(0)
    model = small_model(head=head).train()
    codes = torch.from_numpy(rng.integers(0, K, (40, M)))  # the catalog's digits
    targets = torch.tensor([3, 17, 17, 39])
    hidden = torch.randn(4, 32)
    logits = model.digit_logits(hidden)  # [R, m, K]
    full = model.item_logits(hidden, logits, codes)  # [R, N]
    # the item logit is the mean digit logit, which ranks as the sum of digit log-probabilities does
    assert torch.allclose(full, score_items(logits, codes) / M, atol=1e-5)
    ranking = score_items(logits.log_softmax(-1), codes).argsort(1, descending=True)
    assert torch.equal(full.argsort(1, descending=True), ranking)
    loss = model.item_loss(hidden, logits, targets, codes[targets], torch.arange(40), codes)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(full, targets), atol=1e-5)
    loss.backward()
    assert model.digit_embeddings.weight.grad.abs().sum() > 0


def test_item_ids_add_a_free_vector_that_an_added_item_lacks():
    cfg = ModelConfig(d_model=32, n_heads=4, encoder_layers=1, d_ff=64, dropout=0.0)
    with pytest.raises(ValueError, match="item_ids"):
        ParallelConfig(item_ids=True)  # the digit heads score digits only
    model = ParallelSIDRecommender(M, K, cfg, ParallelConfig(head="shared", item_ids=True), 6, num_items=5)
    codes = torch.randint(0, K, (7, M))
    items = torch.arange(7)  # 5 and 6: added after training
    assert torch.equal(model.item_vectors(codes, items), model.item_vectors(codes, torch.full((7,), 99)))  # zero init
    with torch.no_grad():
        model.item_embeddings.weight.fill_(1.0)
    moved = model.item_vectors(codes, items) - model.digit_embeddings(codes + model.offsets).mean(1)
    assert torch.allclose(moved[:5], torch.ones(5, 32)) and torch.equal(moved[5:], torch.zeros(2, 32))
    states = torch.randn(3, 32)
    assert torch.allclose(model.catalog_scores(states, model.item_table(codes, items)),
                          states @ model.item_vectors(codes, items).T)


def test_item_dropout_trains_a_stand_in_that_new_and_added_items_get():
    cfg = ModelConfig(d_model=32, n_heads=4, encoder_layers=1, d_ff=64, dropout=0.0)
    with pytest.raises(ValueError, match="item_dropout"):
        ParallelConfig(head="shared", item_dropout=0.5)  # no free vectors to drop
    parallel = ParallelConfig(head="shared", item_ids=True, item_dropout=0.5)
    trained = torch.tensor([True, True, True, False, True])  # item 3: a cold-start split's new item
    model = ParallelSIDRecommender(M, K, cfg, parallel, 6, num_items=5, trained_items=trained)
    with torch.no_grad():
        model.item_embeddings.weight.copy_(torch.arange(5.0)[:, None].expand(5, 32) + 1)
        model.unknown_item.fill_(-1.0)
    items = torch.tensor([0, 1, 2, 3, 4, 7])  # 7: added while serving
    own = model.eval().own_vectors(items)[:, 0]
    assert own.tolist() == [1.0, 2.0, 3.0, -1.0, 5.0, -1.0]  # new and added items: the stand-in
    drawn = model.train().own_vectors(torch.zeros(4000, dtype=torch.long))[:, 0]  # item 0, 4000 times
    assert set(drawn.unique().tolist()) == {1.0, -1.0} and abs((drawn == -1).float().mean() - 0.5) < 0.05
    codes = torch.randint(0, K, (5, M))
    hidden = torch.randn(8, 32)
    targets = torch.tensor([0, 1, 2, 4, 0, 1, 2, 4])
    loss = model.item_loss(hidden, None, targets, codes[targets], torch.arange(5), codes)
    loss.backward()
    assert model.unknown_item.grad is not None and model.unknown_item.grad.abs().sum() > 0
    state = model.state_dict()  # which items have a free vector travels with the weights (a bundle)
    loaded = ParallelSIDRecommender(M, K, cfg, parallel, 6, num_items=5)
    loaded.load_state_dict(state)
    assert torch.equal(loaded.has_vector, trained)


def test_the_new_item_offset_lifts_only_items_without_a_vector_to_the_targets_share(rng):
    cfg = ModelConfig(d_model=32, n_heads=4, encoder_layers=1, d_ff=64, dropout=0.0)
    parallel = ParallelConfig(head="shared", item_ids=True, item_dropout=0.5)
    trained = torch.ones(40, dtype=torch.bool)
    trained[30:] = False  # 10 new items
    model = ParallelSIDRecommender(M, K, cfg, parallel, 6, num_items=40, trained_items=trained).eval()
    with torch.no_grad():
        model.item_embeddings.weight.normal_(std=0.5)  # trained items ahead of the new ones
    run = Run(load_config("configs/ml100k.yaml", ["method=parallel"]), None, None,
              None, torch.zeros(40, 1), None, ItemFeatures(torch.from_numpy(rng.integers(0, K, (40, M)))), model)
    states, table = torch.randn(3, 32), run.item_table()
    with torch.no_grad():
        model.new_item_offset.fill_(2.0)
    lifted = model.catalog_scores(states, run.item_table()) - model.catalog_scores(states, table)
    assert torch.allclose(lifted, (~trained).float().expand(3, -1) * 2.0)
    samples = run.history_samples([rng.integers(0, 40, 4).tolist() for _ in range(200)])
    new_targets = np.arange(200) < 60  # 30% of the targets are new items
    fit = fit_new_item_offset(run, samples, new_targets, k=5)
    assert fit.offset > 0 and abs(fit.ranked_share - 0.3) < 0.03
    assert fit.ranked_share == pytest.approx(new_item_share(run, samples, 5))
    assert fit_new_item_offset(run, samples, None).offset == 0.0 == float(model.new_item_offset)


def test_a_runs_item_table_is_kept_and_grown_with_added_items_until_its_weights_change(rng):
    # serving ranks with the table kept between requests; training must never rank with a stale one
    cfg = ModelConfig(d_model=32, n_heads=4, encoder_layers=1, d_ff=64, dropout=0.0)
    model = ParallelSIDRecommender(M, K, cfg, ParallelConfig(head="shared", item_ids=True), 6, num_items=30).eval()
    run = Run(load_config("configs/ml100k.yaml", ["method=parallel"]), None, None,
              None, torch.zeros(30, 1), None, ItemFeatures(torch.from_numpy(rng.integers(0, K, (30, M)))), model)
    samples = run.history_samples([[0, 5, 7], [29], [3, 3, 1, 2]])
    table = run.item_table()
    assert run.item_table() is table  # kept
    assert np.array_equal(run.rank(samples), rank_exact(model, samples, run.items, 20))  # built afresh there
    with torch.no_grad():
        model.item_embeddings.weight.normal_()  # as an optimizer step does: in place
    assert run.item_table() is not table
    assert torch.allclose(run.item_table()[:, :-1], model.item_vectors(run.items.codes, torch.arange(30)))
    assert np.array_equal(run.rank(samples), rank_exact(model, samples, run.items, 20))
    run.items = ItemFeatures(torch.cat([run.items.codes, run.items.codes[:2]]))  # two added items (ItemAdder)
    assert torch.allclose(run.item_table()[:, :-1], model.item_vectors(run.items.codes, torch.arange(32)))
    assert np.array_equal(run.rank(samples), rank_exact(model, samples, run.items, 20))
    run.items = ItemFeatures(run.items.codes.flip(0))  # not an append: built again
    assert torch.allclose(run.item_table()[:, :-1], model.item_vectors(run.items.codes, torch.arange(32)))


def test_product_quantizer_warns_once_and_faiss_stays_quiet(capfd, rng):
    # OPQ's k-means over 256 codes per digit made faiss print its warning for every digit of every
    # iteration (over a thousand lines for a small catalog); gensid says it once, with the collisions
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    with pytest.warns(GensidWarning, match=r"^parallel.codebook_size 256: k-means fitted 256 codes to 500 items, "
                      r"fewer than the 39 per code faiss asks for \(9984\); .*% of the items share") as caught:
        quantizer = ProductQuantizer.fit(vectors, digits=4, codebook_size=256, opq=True)
    assert len(caught) == 1
    assert "WARNING clustering" not in capfd.readouterr().err
    assert quantizer.encode(vectors).shape == (500, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ProductQuantizer.fit(vectors, digits=4, codebook_size=8, opq=True)  # 500 items for 8 codes: enough
    assert "WARNING clustering" not in capfd.readouterr().err
