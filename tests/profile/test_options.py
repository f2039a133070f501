from __future__ import annotations

import pytest

from allocator.errors import InputError
from allocator.profile.options import check_options, parse_options
from allocator.schema.unit import Unit


def test_grid_is_cartesian_product():
    keys = [o.key for o in parse_options("bits=2,4 group=64,128 sparsity=0,0.5,2:4")]
    assert len(keys) == 12
    assert {"b2-g64", "b4-g128-s0.5", "b2-g128-2:4"} <= set(keys)


def test_fp16_sym_method_and_key_lists():
    assert [o.key for o in parse_options("bits=3,16 group=c sym=1 method=gptq")] == [
        "b3-gc-sym@gptq",
        "fp16@gptq",
    ]
    assert [o.key for o in parse_options("b4-g128, fp16")] == ["b4-g128", "fp16"]


@pytest.mark.parametrize(
    "spec",
    ["bits=", "bits=x", "group=128", "bits=3 group=0", "bits=3 sparsity=1.5", "size=3", "b9"],
)
def test_bad_specs_are_input_errors(spec):
    with pytest.raises(InputError):
        parse_options(spec)


def test_ragged_groups_accepted_but_oversized_rejected():
    unit = Unit(name="u", shape=(64, 576))
    check_options(parse_options("bits=3 group=128"), [unit])  # 576 = 4.5 x 128: ragged is fine
    with pytest.raises(InputError, match="exceeds the input size 576"):
        check_options(parse_options("bits=3 group=1024"), [unit])
