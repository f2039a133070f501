"""Token windows: BOS first when the tokenizer adds it, held-out windows disjoint."""

from __future__ import annotations

import pytest
import torch

from allocator.errors import InputError
from allocator.models.windows import adds_bos, token_windows


class _Tokenizer:
    """Whitespace tokenizer with an optional BOS added by default (like Gemma's)."""

    def __init__(self, bos: int | None) -> None:
        self.bos_token_id = bos

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        ids = [int(w) if w.isdigit() else 5 for w in text.split()]
        if add_special_tokens and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]

        class Out:
            input_ids = torch.tensor([ids]) if return_tensors == "pt" else ids

        return Out()


TEXT = " ".join(str(10 + i) for i in range(200))


def test_bos_detected_and_prepended() -> None:
    tok = _Tokenizer(bos=1)
    assert adds_bos(tok)
    windows = token_windows(tok, TEXT, seq_len=8, n_windows=3, contiguous=True)
    assert windows.shape == (3, 8)
    assert (windows[:, 0] == 1).all()
    assert windows[0, 1:].tolist() == list(range(10, 17))  # 7 text tokens follow BOS
    assert windows[1, 1] == 17


def test_no_bos_for_tokenizers_that_do_not_add_it_and_switches() -> None:
    plain = _Tokenizer(bos=None)
    assert not adds_bos(plain)
    windows = token_windows(plain, TEXT, seq_len=8, n_windows=2, contiguous=True)
    assert windows[0].tolist() == list(range(10, 18))
    off = token_windows(_Tokenizer(bos=1), TEXT, seq_len=8, n_windows=2, contiguous=True, bos=False)
    assert off[0].tolist() == list(range(10, 18))
    with pytest.raises(InputError, match="BOS"):
        token_windows(plain, TEXT, seq_len=8, n_windows=2, bos=True)


def test_holdout_windows_are_disjoint_from_calibration() -> None:
    tok = _Tokenizer(bos=None)
    calib = token_windows(tok, TEXT, seq_len=8, n_windows=10, seed=3)
    held = token_windows(tok, TEXT, seq_len=8, n_windows=10, seed=3, holdout=True)
    starts = {int(w[0]) for w in calib}
    assert starts.isdisjoint({int(w[0]) for w in held})


def test_holdout_windows_keep_clear_of_other_draws() -> None:
    """Held-out windows share no token with the calibration draws named in ``avoid`` (here the
    GPTQ windows and shorter profiling windows), and say so when the text is too short."""
    from allocator.models.windows import Draw, holdout_windows

    tok = _Tokenizer(bos=None)
    text = " ".join(str(10 + i) for i in range(400))  # token values are their positions + 10
    gptq = token_windows(tok, text, seq_len=8, n_windows=10, seed=3)
    profile = token_windows(tok, text, seq_len=4, n_windows=20, seed=3)
    used = {int(t) for w in (*gptq, *profile) for t in w}
    plain = token_windows(tok, text, seq_len=8, n_windows=10, seed=3, holdout=True)
    assert {int(t) for w in plain for t in w} & used  # the seed's plain holdout overlaps
    held, overlapping = holdout_windows(tok, text, seq_len=8, n_windows=10, seed=3,
                                        avoid=[Draw(10, 8), Draw(20, 4)])  # fmt: skip
    assert overlapping == 0 and held.shape == (10, 8)
    assert not {int(t) for w in held for t in w} & used
    short, overlapping = holdout_windows(tok, TEXT, seq_len=8, n_windows=10, seed=3,
                                         avoid=[Draw(20, 8)])  # fmt: skip
    assert short.shape == (10, 8) and overlapping == 5  # 25 windows in all, 20 taken
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    starts = (order[-10:].sort().values * 8 + 10).tolist()  # without avoid: as before
    assert [int(w[0]) for w in plain] == starts
