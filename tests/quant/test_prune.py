"""Magnitude and Wanda masks: exact ratios, valid N:M patterns, Wanda uses activation norms."""

from __future__ import annotations

import pytest
import torch

from allocator.errors import InputError
from allocator.quant.prune import nm_mask, prune_mask, unstructured_mask, wanda_scores
from allocator.schema.option import Option


def test_unstructured_ratio_exact_per_row(weight):
    mask = prune_mask(weight, Option.parse("b4-g128-s0.5"))
    assert (mask.sum(dim=1) == 100).all()
    kept, pruned = weight.abs()[mask], weight.abs()[~mask]
    for row in range(weight.shape[0]):
        assert weight[row].abs()[mask[row]].min() >= weight[row].abs()[~mask[row]].max()
    assert kept.numel() + pruned.numel() == weight.numel()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
def test_nm_pattern_valid(weight, n, m):
    mask = nm_mask(weight.abs(), n, m)
    per_group = mask.reshape(weight.shape[0], -1, m).sum(dim=2)
    assert (per_group == n).all()


def test_nm_ragged_last_group_keeps_n():
    scores = torch.rand(3, 10)
    mask = nm_mask(scores, 2, 4)
    assert (mask[:, :8].reshape(3, 2, 4).sum(2) == 2).all()
    assert (mask[:, 8:].sum(1) == 2).all()


def test_wanda_follows_activation_norms(weight):
    act_sq = torch.ones(200)
    act_sq[:100] = 1e-6  # nearly dead inputs: Wanda prunes these first
    mask = prune_mask(weight, Option.parse("b4-g128-s0.5"), act_sq)
    assert mask[:, :100].float().mean() < 0.05
    assert not torch.equal(mask, prune_mask(weight, Option.parse("b4-g128-s0.5")))
    with pytest.raises(InputError, match="act_sq"):
        wanda_scores(weight, torch.ones(7))


def test_bad_ratio():
    with pytest.raises(InputError):
        unstructured_mask(torch.rand(2, 4), 1.5)
