"""The SCAN encoder–decoder: causal decoder, padding that changes nothing, and batch trimming."""

from __future__ import annotations

import torch

from gradience.models.seq2seq import Seq2SeqTransformer
from gradience.tasks import scan
from gradience.training import loss_and_accuracy


def _model():
    return Seq2SeqTransformer(len(scan.VOCAB), scan.SRC_LEN, scan.TGT_LEN, d_model=16, n_layers=1, n_heads=2, seed=0).eval()


def test_decoder_is_causal_and_sees_the_source():
    m = _model()
    x, _ = scan.encode(["jump twice", "walk left"])
    with torch.no_grad():
        base = m(x)
        later = x.clone()
        later[:, scan.SRC_LEN + 2] = scan.TOKEN["I_RUN"]  # change decoder input 2
        out = m(later)
        torch.testing.assert_close(out[:, :2], base[:, :2])  # earlier positions unchanged
        assert not torch.allclose(out[:, 2], base[:, 2])
        other = x.clone()
        other[0, 0] = scan.TOKEN["look"]  # change the source
        assert not torch.allclose(m(other)[0, 0], base[0, 0])


def test_trim_keeps_loss_and_accuracy():
    m = _model()
    x, y = scan.encode(["jump twice", "walk left", "run and look"])
    xt, yt = scan.trim(x, y)
    assert yt.shape[1] == int((y != -100).sum(1).max()) == 3 and xt.shape[1] == scan.SRC_LEN + 3
    with torch.no_grad():
        full, short = loss_and_accuracy(m(x), y), loss_and_accuracy(m(xt), yt)
    torch.testing.assert_close(full[0], short[0])
    torch.testing.assert_close(full[1], short[1])
