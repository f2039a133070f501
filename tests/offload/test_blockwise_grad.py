"""Fisher and K-FAC computed block by block backwards equal the whole-graph estimates."""

from __future__ import annotations

import pytest

from allocator.models.offload import runtime_of
from allocator.profile.api import profile
from tests.offload.conftest import in_memory, max_relative_gap, offloaded


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "bert"])
@pytest.mark.parametrize("estimator", ["fisher", "kfac"])
def test_blockwise_gradients_equal_whole_graph(folders, ids, family: str, estimator: str) -> None:
    kwargs = {"progress": False, "batch_size": 2}
    options = "bits=2,3 group=32"
    ids = ids[:3, :16]
    whole = profile(in_memory(folders[family]), ids, estimator, options, **kwargs)
    blockwise = profile(
        in_memory(folders[family]), ids, estimator, options, settings={"blockwise": True}, **kwargs
    )
    model = offloaded(folders[family])
    streamed = profile(model, ids, estimator, options, **kwargs)
    assert max_relative_gap(whole.losses, blockwise.losses) <= 1e-6
    assert max_relative_gap(whole.losses, streamed.losses) <= 1e-6
    assert runtime_of(model).resident_bytes == 0


def test_blockwise_fisher_holds_one_block(folders, ids) -> None:
    model = offloaded(folders["llama"])
    profile(model, ids, "fisher", "bits=2,4 group=32", progress=False)
    runtime = runtime_of(model)
    block = sum(p.numel() * 4 for p in in_memory(folders["llama"]).model.layers[0].parameters())
    # one block, or the final norm and the head with the tied embedding
    assert runtime.peak_resident_bytes <= max(block, 128 * 64 * 4 + 64 * 4) + 1024
