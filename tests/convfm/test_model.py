"""ConvFM parts: shapes, the FM identity, pooling, sparse gradients, seeded golden behaviour, and each part's
split over two field groups (what ranking precomputes) against its forward."""
import itertools

import pytest
import torch
from torch import nn

from convfm.config import ModelConfig
from convfm.features.fields import PAD, UNK, FeatureMap, FieldSpec
from convfm.model.network import ConvFM, DeepHead, FieldConv, FMInteraction
from convfm.model.optim import build_optimizer

B, L = 4, 5


def feature_map() -> FeatureMap:
    return FeatureMap((
        FieldSpec("user_id", "categorical", "user", "user", 10),
        FieldSpec("user_skills", "multi", "user", "skill", 20, max_len=L),
        FieldSpec("job_id", "categorical", "job", "job", 12),
        FieldSpec("job_skills", "multi", "job", "skill", 20, max_len=L),
        FieldSpec("company", "categorical", "job", "company", 6),
        FieldSpec("salary", "dense", "job", width=3),
    ))


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, 10, (B,), generator=g), torch.randint(0, 12, (B,), generator=g),
                       torch.randint(0, 6, (B,), generator=g)], dim=1)
    multi = torch.randint(0, 20, (B, 2, L), generator=g)
    dense = torch.randn(B, 3, generator=g)
    return cat, multi, dense


def small_config(**overrides) -> ModelConfig:
    return ModelConfig(**{"embedding_dim": 8, "conv_filters": 6, "hidden_dims": (16, 8), **overrides})


def test_fm_term_equals_brute_force_pairwise_sum():
    emb = torch.randn(3, 7, 5, dtype=torch.float64)
    brute = sum((emb[:, i] * emb[:, j]).sum(-1) for i, j in itertools.combinations(range(7), 2))
    assert torch.allclose(FMInteraction()(emb), brute)


def test_part_shapes():
    torch.manual_seed(0)
    model = ConvFM(small_config(), feature_map()).eval()
    cat, multi, dense = batch()
    emb = model.field_embeddings(cat, multi, dense)
    assert emb.shape == (B, 6, 8)
    assert model.conv(emb).shape == (B, 6)
    assert model.fm(emb).shape == (B,)
    assert model.linear_term(cat, multi, dense).shape == (B,)
    assert model(cat, multi, dense).shape == (B,)
    assert model.pairwise_interactions(cat, multi, dense).shape == (B, 6, 6)


def test_field_axis_follows_feature_map_order():
    model = ConvFM(small_config(), feature_map())
    # grouped [cat: user_id, job_id, company | multi: user_skills, job_skills | dense: salary]
    assert model.field_order.tolist() == [0, 3, 1, 4, 2, 5]


def test_shared_vocab_shares_rows():
    model = ConvFM(small_config(), feature_map()).eval()
    cat, multi, dense = batch()
    multi[:, 0] = 0
    multi[:, 1] = 0
    multi[:, 0, 0] = 7
    multi[:, 1, 0] = 7
    emb = model.field_embeddings(cat, multi, dense)
    assert torch.equal(emb[:, 1], emb[:, 3])  # user_skills and job_skills: the same skill, the same vector


def test_multi_valued_mean_ignores_padding():
    model = ConvFM(small_config(), feature_map()).eval()
    cat, multi, dense = batch()
    multi[:, 0] = torch.tensor([3, 4, 0, 0, 0])
    padded = model.field_embeddings(cat, multi, dense)[:, 1]
    rows = model.embedding.table.weight[model.embedding.multi_offsets[0] + torch.tensor([3, 4])]
    assert torch.allclose(padded, rows.mean(0).expand_as(padded), atol=1e-6)


def test_all_padding_list_gives_zero_vector():
    model = ConvFM(small_config(), feature_map()).eval()
    cat, multi, dense = batch()
    multi[:] = 0
    assert torch.count_nonzero(model.field_embeddings(cat, multi, dense)[:, 1]) == 0


def test_conv_max_pool_over_fields():
    conv = FieldConv(dim=4, filters=3, kernel_size=3)
    emb = torch.randn(2, 5, 4)
    positions = torch.relu(conv.conv(emb.transpose(1, 2)))
    assert torch.equal(conv(emb), positions.amax(dim=2))
    assert positions.shape == (2, 3, 5)  # padding keeps one position per field


def test_forward_is_deterministic_in_eval_and_seeded():
    torch.manual_seed(3)
    a = ConvFM(small_config(), feature_map()).eval()
    torch.manual_seed(3)
    b = ConvFM(small_config(), feature_map()).eval()
    assert torch.equal(a(*batch()), b(*batch()))


def test_sparse_embeddings_get_sparse_gradients_and_train():
    torch.manual_seed(0)
    model = ConvFM(small_config(sparse_embeddings=True), feature_map())
    optimizer = build_optimizer(model, 1e-2)
    cat, multi, dense = batch()
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(cat, multi, dense), labels)
        loss.backward()
        assert model.embedding.table.weight.grad.is_sparse
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5
    assert len(optimizer.optimizers) == 2


def test_sparse_and_dense_modes_agree_on_logits_and_gradients():
    torch.manual_seed(0)
    dense_model = ConvFM(small_config(), feature_map())
    sparse_model = ConvFM(small_config(sparse_embeddings=True), feature_map())
    sparse_model.load_state_dict(dense_model.state_dict())
    cat, multi, dense = batch()
    for model in (dense_model, sparse_model):
        model.eval()
        model(cat, multi, dense).sum().backward()
    assert torch.allclose(dense_model(cat, multi, dense), sparse_model(cat, multi, dense), atol=1e-6)
    for table in ("embedding", "linear"):
        dense_grad = getattr(dense_model, table).table.weight.grad
        sparse_grad = getattr(sparse_model, table).table.weight.grad
        assert sparse_grad.is_sparse and not dense_grad.is_sparse
        assert torch.count_nonzero(dense_grad) > 0
        assert torch.allclose(sparse_grad.to_dense(), dense_grad, atol=1e-6)
        distinct_rows = sparse_model.embedding.plan(cat, multi).unique.numel()
        assert sparse_grad._nnz() == distinct_rows < cat.numel() + multi.numel()  # one row per distinct id


def test_optimizer_state_round_trip():
    model = ConvFM(small_config(sparse_embeddings=True), feature_map())
    optimizer = build_optimizer(model, 1e-2)
    loss = model(*batch()).sum()
    loss.backward()
    optimizer.step()
    assert optimizer.optimizers[0].defaults["fused"]  # one-pass Adam kernel for the dense parameters
    other = build_optimizer(model, 1e-2)
    other.load_state_dict(optimizer.state_dict())
    assert other.state_dict()["optimizers"][0]["state"].keys() == optimizer.state_dict()["optimizers"][0]["state"].keys()


def test_empty_feature_map_is_rejected():
    with pytest.raises(ValueError, match="at least one field"):
        ConvFM(small_config(), FeatureMap(()))


# ------------------------------------------------------------------ splits over two field groups (ranking)
def test_field_terms_are_per_field_and_add_up_to_the_linear_term():
    """Each field's vector and weight depend on its own inputs only: a group's terms can be computed with the
    other group's inputs replaced (ranking pads them)."""
    torch.manual_seed(0)
    model = ConvFM(small_config(), feature_map()).eval()
    users, jobs = batch(0), batch(1)
    # user fields: user_id (cat column 0) and user_skills (multi 0); the rest are job fields
    mixed = (torch.cat([users[0][:, :1], jobs[0][:, 1:]], 1), torch.stack([users[1][:, 0], jobs[1][:, 1]], 1), jobs[2])
    for inputs, own, cut in ((users, slice(0, 2), 2), (jobs, slice(2, 6), 2)):
        for expected, got in zip(model.field_terms(*inputs), model.field_terms(*mixed)):
            assert torch.equal(got[:, own], expected[:, own])
    emb, weights = model.field_terms(*users)
    assert torch.equal(emb, model.field_embeddings(*users))
    assert torch.allclose(weights.sum(1) + model.bias, model.linear_term(*users), atol=1e-6)


def test_fm_split_and_pairs_recombine_to_forward():
    emb = torch.randn(3, 7, 5, dtype=torch.float64)
    fm = FMInteraction()
    for cut in range(1, 7):
        assert torch.allclose(fm.combine(fm.side(emb[:, :cut]), fm.side(emb[:, cut:])), fm(emb))
    assert torch.allclose(torch.triu(fm.pairs(emb, emb), diagonal=1).sum((1, 2)), fm(emb))


@pytest.mark.parametrize("kernel", [1, 3, 5, 9])
def test_conv_split_recombines_to_forward(kernel, randomize):
    conv = randomize(FieldConv(dim=4, filters=3, kernel_size=kernel).double(), seed=kernel)
    emb = torch.randn(5, 6, 4, dtype=torch.float64)
    for cut in range(1, 6):
        left, right = conv.side(emb[:, :cut], cut, 6, left=True), conv.side(emb[:, cut:], cut, 6, left=False)
        assert torch.allclose(conv.combine(left, right), conv(emb))


def with_layer_norms(head: DeepHead) -> DeepHead:
    """``head`` edited to a LayerNorm after each BatchNorm, as a change to DeepHead alone would do."""
    layers = [[layer, nn.LayerNorm(layer.num_features)] if isinstance(layer, nn.BatchNorm1d) else [layer]
              for layer in head.mlp]
    head.mlp = nn.Sequential(*(layer for group in layers for layer in group))
    return head


@pytest.mark.parametrize("edit", [lambda head: head, with_layer_norms], ids=["as built", "layer norms"])
def test_deep_head_split_recombines_to_forward(edit, randomize):
    head = randomize(edit(DeepHead(10, (8, 5), dropout=0.3)).double(), seed=1)
    x = torch.randn(6, 10, dtype=torch.float64)
    split = head.split([3, 4, 3])
    first = split.partial(0, x[:, :3]) + split.partial(1, x[:, 3:7]) + split.partial(2, x[:, 7:])
    assert torch.allclose(split.finish(first), head(x))


def test_deep_head_split_refuses_what_it_cannot_cut():
    head = DeepHead(10, (8,), dropout=0.3)
    with pytest.raises(ValueError, match="needs eval mode"):
        head.split([5, 5])
    head.eval()
    with pytest.raises(ValueError, match=r"column blocks \[5, 4\] do not add up to the input width 10"):
        head.split([5, 4])
    head.mlp = nn.Sequential(nn.LayerNorm(10), *head.mlp)
    with pytest.raises(ValueError, match="its first layer is LayerNorm, not Linear"):
        head.split([5, 5])


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_model_split_recombines_to_forward_at_every_cut(kernel, randomize):
    model = randomize(ConvFM(small_config(conv_kernel_size=kernel), feature_map()).double(), seed=kernel)
    cat, multi, dense = batch()
    dense = dense.double()
    expected = model(cat, multi, dense)
    assert expected.abs().max() > 0.1  # not vacuous
    for cut in range(1, 6):
        split = model.split(cut)
        left, right = split.side(cat, multi, dense, left=True), split.side(cat, multi, dense, left=False)
        assert torch.allclose(split.combine(left, right), expected)
    with pytest.raises(ValueError, match="a cut at field 6 leaves a group empty"):
        model.split(6)


# ------------------------------------------------------------------ embedding L2 penalty (TrainConfig.embedding_l2)
def one_table_map() -> FeatureMap:
    return FeatureMap((FieldSpec("ad", "categorical", "row", "ad", 3), FieldSpec("tags", "multi", "row", "tag", 4, max_len=3)))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_penalty_is_the_squared_norm_of_the_rows_read_per_example(sparse):
    model = ConvFM(small_config(embedding_dim=2, sparse_embeddings=sparse), one_table_map()).eval()
    with torch.no_grad():
        model.embedding.table.weight.copy_(torch.tensor([[r, 0.0] for r in range(7)]))  # ||row r||^2 = r^2
        model.linear.table.weight.fill_(1.0)
    # rows: ad 0-2, tag 3-6 (tag 0, row 3, is padding). Example 0 reads ad 1, tags 1, 2 (+ a padding entry),
    # example 1 reads ad 2, tag 3: embedding 1 + 16 + 25 + 4 + 36 = 82, first order 5 reads x 1, over 2 examples
    cat, multi, dense = torch.tensor([[1], [2]]), torch.tensor([[[1, 2, 0]], [[3, 0, 0]]]), torch.zeros(2, 0)
    logits, penalty = model(cat, multi, dense, penalty=True)
    assert penalty.item() == pytest.approx(43.5)
    assert torch.equal(logits, model(cat, multi, dense))  # the same pass as without the penalty


def test_penalty_counts_a_row_once_per_read():
    model = ConvFM(small_config(embedding_dim=2), one_table_map())
    with torch.no_grad():
        model.embedding.table.weight.copy_(torch.tensor([[r, 0.0] for r in range(7)]))
        model.linear.table.weight.zero_()
    cat, multi, dense = torch.tensor([[2], [2]]), torch.tensor([[[2, 2, 0]], [[0, 0, 0]]]), torch.zeros(2, 0)
    assert model(cat, multi, dense, penalty=True)[1].item() == pytest.approx((4 + 4 + 25 + 25) / 2)


def test_penalty_gradient_reaches_only_the_rows_the_batch_read():
    torch.manual_seed(0)
    model = ConvFM(small_config(id_dropout=0.0), feature_map())  # training mode: the ids as given
    cat, multi, dense = batch()
    model(cat, multi, dense, penalty=True)[1].backward()
    for part in (model.embedding, model.linear):
        plan = part.plan(cat, multi)
        read = torch.zeros(part.table.num_embeddings, dtype=torch.bool)
        read[plan.index[plan.counted() > 0]] = True  # padding list entries read row 0 of a vocab but do not count
        grad = part.table.weight.grad
        assert 0 < read.sum() < len(read)
        assert torch.count_nonzero(grad[~read]) == 0 and bool((grad[read] != 0).any(1).all())


def test_sparse_and_dense_modes_agree_on_the_penalty_and_its_gradients():
    torch.manual_seed(0)
    dense_model = ConvFM(small_config(id_dropout=0.0), feature_map())  # training mode: the ids as given
    sparse_model = ConvFM(small_config(sparse_embeddings=True, id_dropout=0.0), feature_map())
    sparse_model.load_state_dict(dense_model.state_dict())
    cat, multi, dense = batch()
    penalties = [model(cat, multi, dense, penalty=True)[1] for model in (dense_model, sparse_model)]
    for penalty in penalties:
        penalty.backward()
    assert penalties[0].item() > 0 and torch.allclose(penalties[0], penalties[1], rtol=1e-6)
    for table in ("embedding", "linear"):
        sparse_grad = getattr(sparse_model, table).table.weight.grad
        assert sparse_grad.is_sparse
        assert torch.allclose(sparse_grad.to_dense(), getattr(dense_model, table).table.weight.grad, atol=1e-7)


def test_weight_decay_skips_exactly_the_scale_invariant_layers_and_the_skill_match():
    torch.manual_seed(0)
    model = ConvFM(small_config(), feature_map())
    invariant = model.deep.scale_invariant_parameters()
    skill = [model.skill_match.weight] if model.skill_match is not None else []
    in_dim = model.deep.mlp[0].in_features
    assert [tuple(p.shape) for p in invariant] == [(16, in_dim), (16,), (8, 16), (8,)]  # not the output layer
    head, x = model.deep.train(), torch.randn(32, in_dim)  # train mode: BatchNorm on the batch's statistics

    def logits() -> torch.Tensor:
        torch.manual_seed(1)  # the same dropout mask
        return head(x)

    before = logits()
    with torch.no_grad():
        for p in invariant:
            p.mul_(3.0)  # BatchNorm undoes the scale (and shift) of the layer it follows
    assert torch.allclose(logits(), before, atol=1e-4)
    decayed, exempt = build_optimizer(model, 1e-2, weight_decay=0.5).optimizers[0].param_groups
    assert [id(p) for p in exempt["params"]] == [id(p) for p in invariant + skill] and exempt["weight_decay"] == 0.0
    assert decayed["weight_decay"] == 0.5
    assert len(decayed["params"]) + len(invariant + skill) == len(list(model.parameters()))
    assert len(build_optimizer(model, 1e-2).optimizers[0].param_groups) == 1  # no decay: one group, as saved before


def test_id_dropout_sends_ids_to_the_unknown_row_in_training_only():
    fields = FeatureMap((
        FieldSpec("user_id", "categorical", "user", "user", 10),
        FieldSpec("history_jobs", "multi", "user", "job", 12, max_len=L),
        FieldSpec("user_skills", "multi", "user", "skill", 20, max_len=L),
        FieldSpec("job_id", "categorical", "job", "job", 12),
        FieldSpec("company", "categorical", "job", "company", 6),
    ))
    model = ConvFM(small_config(id_dropout=0.3), fields)
    cat = torch.tensor([[5, 7, 4]]).repeat(4000, 1)  # user_id, job_id, company
    multi = torch.tensor([[9, 8, 0, 0, 0], [3, 4, 0, 0, 0]]).repeat(4000, 1, 1)  # history_jobs, user_skills
    torch.manual_seed(0)
    dropped_cat, dropped_multi = model.id_dropout(cat, multi)
    for column, value in ((0, 5), (1, 7)):  # each id alone, at the rate, to UNK
        assert set(dropped_cat[:, column].tolist()) == {value, UNK}
        assert abs((dropped_cat[:, column] == UNK).float().mean().item() - 0.3) < 0.03
    entries = dropped_multi[:, 0, :2]
    assert abs((entries == UNK).float().mean().item() - 0.3) < 0.03 and set(entries.unique().tolist()) == {UNK, 8, 9}
    assert (dropped_cat[:, 2] == 4).all() and torch.equal(dropped_multi[:, 1], multi[:, 1])  # company, skills
    assert (dropped_multi[:, 0, 2:] == PAD).all()  # padding stays padding
    model.eval()
    assert all(torch.equal(a, b) for a, b in zip(model.id_dropout(cat, multi), (cat, multi)))
    # no dropout: training draws nothing (the same random stream as a model without it)
    plain = ConvFM(small_config(id_dropout=0.0), fields).train()
    state = torch.get_rng_state()
    assert all(torch.equal(a, b) for a, b in zip(plain.id_dropout(cat, multi), (cat, multi)))
    assert torch.equal(torch.get_rng_state(), state)
