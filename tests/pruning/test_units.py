"""Unit tests of the pieces: bin allocation and merging, n-softmax, parameter validation."""

from __future__ import annotations

import pytest
import torch

from videoqa.worker.errors import InvalidInput
from videoqa.worker.model.attention import _normalize
from videoqa.worker.pruning.bin import allocate, recycle
from videoqa.worker.pruning.methods.das import subsidy_weights
from videoqa.worker.pruning.registry import build_method, describe_methods
from videoqa.worker.types import PruningSpec


def test_allocate_spreads_entries_and_never_exceeds_evicted_counts():
    assert allocate(torch.tensor([5, 0, 3, 1]), 3).tolist() == [1, 0, 1, 1]
    assert allocate(torch.tensor([5, 0, 3, 1]), 6).tolist() == [3, 0, 2, 1]
    assert allocate(torch.tensor([1, 1]), 0).tolist() == [0, 0]
    assert int(allocate(torch.tensor([2, 2]), 9).sum()) == 4  # cannot exceed what was evicted


def test_recycle_chunks_frames_contiguously_and_shares_when_short():
    keys = torch.arange(8, dtype=torch.float32).repeat(1, 1).T[None].expand(1, 8, 1).clone()  # [1, 8, 1]
    frame_of = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    evicted = torch.ones(1, 8, dtype=torch.bool)
    weights = torch.ones(1, 8)
    ((k, _, counts),) = recycle(keys, keys, evicted, frame_of, [4], weights)
    assert k.flatten().tolist() == [0.5, 2.5, 4.5, 6.5] and counts.tolist() == [2, 2, 2, 2]
    ((k, _, counts),) = recycle(keys, keys, evicted, frame_of, [1], weights)  # fewer entries than frames
    assert k.flatten().tolist() == [3.5] and counts.tolist() == [8]
    ((k, _, _),) = recycle(keys, keys, evicted, frame_of, [0], weights)
    assert k.shape == (0, 1)


def test_n_softmax_matches_its_definition():
    logits = torch.tensor([[[0.3, -1.0, 2.0, float("-inf")]]])
    z = logits[..., :3]
    expected = torch.exp(z) / (1 + torch.exp(z).sum(dim=-1, keepdim=True))
    got = _normalize(logits, "softmax1")
    assert torch.allclose(got[..., :3], expected) and got[..., 3] == 0
    big = torch.tensor([[[80.0, 79.0]]])  # no overflow for large logits
    assert torch.isfinite(_normalize(big, "softmax1")).all()


def test_subsidy_position_prior_and_fitted_decay():
    flat = torch.ones(1, 5)
    weights = subsidy_weights(flat, 2.0, 0, 1.0)
    assert torch.allclose(weights, torch.tensor([[1, 2**0.25, 2**0.5, 2**0.75, 2.0]]))
    decaying = torch.exp(-0.3 * torch.arange(5.0))[None]
    fitted = subsidy_weights(decaying, 1e9, 1, 1.0)  # γ → ∞ undoes the fitted decay
    assert torch.allclose(decaying * fitted, torch.ones(1, 5), atol=1e-4)
    assert torch.equal(subsidy_weights(flat, 1.0, 1, 1.0), torch.ones(1, 5))


def test_every_method_lists_bounded_typed_parameters():
    for method in describe_methods():
        for param in method.params:
            assert param.min <= param.default <= param.max, (method.name, param.name)
            assert param.description


@pytest.mark.parametrize(
    "spec",
    [
        PruningSpec("das", {"gamma": 0.5}, 0.2),
        PruningSpec("das", {"bins_per_frame": 1.5}, 0.2),
        PruningSpec("das", {"nope": 1}, 0.2),
        PruningSpec("snapkv", {"window": 0}, 0.2),
        PruningSpec("das", {"alpha": float("nan")}, 0.2),
        PruningSpec("nope", {}, 0.2),
        PruningSpec("das", {}, 1.5),
    ],
)
def test_bad_parameters_are_invalid_input(spec):
    with pytest.raises(InvalidInput):
        build_method(spec)
