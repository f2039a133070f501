"""llama.cpp imatrix files (GGUF and legacy .dat) become mean squared inputs per column."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from allocator.errors import InputError
from allocator.profile.importers import read_imatrix

RNG = np.random.default_rng(0)
ACTS = {  # GGUF weight name -> calibration inputs (tokens, in_features)
    "blk.0.attn_q.weight": RNG.normal(size=(300, 576)),
    "blk.0.ffn_down.weight": RNG.normal(scale=2.0, size=(300, 1536)),
    "blk.1.attn_output.weight": RNG.normal(size=(120, 576)),
}


def write_gguf_imatrix(path, acts, experts=None):
    """The layout llama-imatrix writes: <name>.in_sum2 [ne0, n_mat] and <name>.counts [1, n_mat]."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_type(gguf.GGUFType.IMATRIX)
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, 3)
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, 512)
    writer.add_array(gguf.Keys.IMatrix.DATASETS, ["persuasion.txt"])
    for name, x in acts.items():
        writer.add_tensor(f"{name}.in_sum2", (x**2).sum(0, keepdims=True).astype(np.float32))
        writer.add_tensor(f"{name}.counts", np.array([[x.shape[0]]], dtype=np.float32))
    for name, (sums, counts) in (experts or {}).items():
        writer.add_tensor(f"{name}.in_sum2", sums.astype(np.float32))
        writer.add_tensor(f"{name}.counts", counts.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_legacy_imatrix(path, acts, ncall=4, dataset="persuasion.txt"):
    """llama.cpp's old save_imatrix: values stored as mean * ncall."""
    out = struct.pack("<i", len(acts))
    for name, x in acts.items():
        mean = (x**2).mean(0)
        out += struct.pack("<i", len(name)) + name.encode()
        out += struct.pack("<ii", ncall, mean.size) + (mean * ncall).astype("<f4").tobytes()
    out += struct.pack("<i", ncall) + struct.pack("<i", len(dataset)) + dataset.encode()
    path.write_bytes(out)


def _expected(name):
    return (ACTS[name] ** 2).mean(0)


def test_gguf_imatrix(tmp_path):
    path = tmp_path / "imatrix.gguf"
    sums = RNG.uniform(1, 2, size=(2, 64))
    write_gguf_imatrix(
        path, ACTS, experts={"blk.2.ffn_down_exps.weight": (sums, np.array([[10.0], [0.0]]))}
    )
    im = read_imatrix(path)
    assert im.source_format == "gguf" and im.chunk_count == 3 and im.datasets == ["persuasion.txt"]
    assert set(im.weights) == {
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.o_proj",
    }
    np.testing.assert_allclose(
        im.weights["model.layers.0.mlp.down_proj"], _expected("blk.0.ffn_down.weight"), rtol=1e-5
    )
    np.testing.assert_allclose(
        im.weights["model.layers.0.self_attn.q_proj"], _expected("blk.0.attn_q.weight"), rtol=1e-5
    )
    experts = im.unmapped["blk.2.ffn_down_exps.weight"]
    np.testing.assert_allclose(experts[0], sums[0] / 10, rtol=1e-6)
    np.testing.assert_array_equal(experts[1], np.ones(64))  # no tokens: weight 1, as llama-quantize


def test_legacy_imatrix(tmp_path):
    path = tmp_path / "imatrix.dat"
    write_legacy_imatrix(path, ACTS)
    im = read_imatrix(path)
    assert (
        im.source_format == "legacy" and im.chunk_count == 4 and im.datasets == ["persuasion.txt"]
    )
    got = im.weights["model.layers.1.self_attn.o_proj"]
    assert got.shape == (576,)
    np.testing.assert_allclose(got, _expected("blk.1.attn_output.weight"), rtol=1e-5)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="no such imatrix"):
        read_imatrix(tmp_path / "missing.dat")
    path = tmp_path / "short.dat"
    write_legacy_imatrix(path, ACTS)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(InputError, match="truncated"):
        read_imatrix(path)


def test_for_units_checks_sizes(tmp_path):
    from allocator.schema import Unit

    path = tmp_path / "imatrix.dat"
    write_legacy_imatrix(path, ACTS)
    im = read_imatrix(path)
    good = Unit(name="model.layers.0.mlp.down_proj", shape=(576, 1536))
    assert im.for_units([good])[good.name].shape == (1536,)
    with pytest.raises(InputError, match="another model"):
        im.for_units([Unit(name="model.layers.0.self_attn.q_proj", shape=(576, 960))])
    with pytest.raises(InputError, match="no entry"):
        im.for_units([Unit(name="model.layers.7.mlp.up_proj", shape=(1536, 576))])
