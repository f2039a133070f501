"""The ``allocator::quant_matmul`` custom op: contract, validation, fake impl, GPU dispatch."""

from __future__ import annotations

import allocator.kernels.ops  # noqa: F401  (registers the op)
import pytest
import torch

from allocator.errors import InputError

from ._helpers import random_packed, reference_out, rel_err

K, N = 150, 40


def _op(x, planes, scales, zeros, bits=3, group=64, k=K):
    return torch.ops.allocator.quant_matmul(x, planes, scales, zeros, bits, group, k)


def test_cpu_reference_keeps_leading_dims_and_dtype() -> None:
    planes, scales, zeros = random_packed(K, N, 3, 64, 1)
    x = torch.randn(2, 3, K)
    out = _op(x, planes, scales, zeros)
    assert out.shape == (2, 3, N) and out.dtype == x.dtype
    assert (
        rel_err(out.reshape(6, N), reference_out(x.reshape(6, K), planes, scales, zeros, 3, 64, K))
        < 1e-6
    )
    assert _op(x.half(), planes, scales, zeros).dtype == torch.float16


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: {**a, "planes": a["planes"][:1]}, "needs 2 planes"),
        (lambda a: {**a, "x": a["x"][:, :-1]}, "in_features"),
        (lambda a: {**a, "scales": a["scales"][:1]}, "scales/zeros"),
        (lambda a: {**a, "planes": [p.long() for p in a["planes"]]}, "int32"),
    ],
)
def test_inconsistent_arguments_raise_input_error(change, match) -> None:
    planes, scales, zeros = random_packed(K, N, 3, 64, 2)
    args = change({"x": torch.randn(1, K), "planes": planes, "scales": scales, "zeros": zeros})
    with pytest.raises(InputError, match=match):
        _op(args["x"], args["planes"], args["scales"], args["zeros"])


def test_opcheck_schema_and_fake() -> None:
    planes, scales, zeros = random_packed(K, N, 5, 32, 3)
    args = (torch.randn(4, K), planes, scales, zeros, 5, 32, K)
    torch.library.opcheck(torch.ops.allocator.quant_matmul.default, args)


def test_torch_compile_traces_through_the_fake() -> None:
    planes, scales, zeros = random_packed(K, N, 4, 64, 4)

    def layer(x):
        return torch.relu(_op(x, planes, scales, zeros, 4, 64)) + 1

    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, K)
    torch.testing.assert_close(compiled(x), layer(x))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 5, 16, 100])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_gpu_dispatch_matches_reference(bits, m) -> None:
    planes, scales, zeros = random_packed(1000, 520, bits, 128, bits + m, "cuda")
    x = torch.randn(m, 1000, device="cuda", dtype=torch.float16)
    out = _op(x, planes, scales, zeros, bits, 128, 1000)
    assert rel_err(out, reference_out(x, planes, scales, zeros, bits, 128, 1000)) < 2e-3


@pytest.mark.gpu
def test_gpu_op_under_cuda_graph() -> None:
    planes, scales, zeros = random_packed(512, 256, 4, 128, 9, "cuda")
    x = torch.randn(1, 512, device="cuda", dtype=torch.float16)
    _op(x, planes, scales, zeros, 4, 128, 512)  # compile + autotune before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = _op(x, planes, scales, zeros, 4, 128, 512)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.testing.assert_close(static, _op(x, planes, scales, zeros, 4, 128, 512))
