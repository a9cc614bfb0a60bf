import math
from collections import Counter

import numpy as np
import pytest
import torch

from gradience.tasks import dyck, scan


def _depth_by_counting(row):
    out, d = [], 0
    for t in row:
        d += 1 if t == dyck.OPEN else -1
        out.append(d)
    return out


def test_dyck_targets_are_the_nesting_depth():
    s = dyck.dyck_split(50, 20, length=16, kind="balanced", seed=3)
    for x, y in ((s.x_train, s.y_train), (s.x_test, s.y_test)):
        for row, target in zip(x.tolist(), y.tolist(), strict=True):
            assert target == _depth_by_counting(row)
            assert min(target) >= 0 and target[-1] == 0
    assert s.x_train.shape == (50, 16) and s.y_test.shape == (20, 16) and s.x_train.dtype == torch.int64
    p = dyck.dyck_split(30, 10, length=12, kind="prefix", seed=0)
    assert all(dyck.is_valid(r, "prefix") for r in p.x_train.numpy())
    assert (p.y_train == torch.as_tensor(dyck.depths(p.x_train.numpy()))).all()


def test_dyck_counts_uniformity_and_disjoint_seeded_splits():
    assert dyck.n_sequences(24) == math.comb(24, 12) // 13  # Catalan(12) = 208,012
    assert dyck.n_sequences(24, "prefix") == math.comb(24, 12)
    assert dyck.n_sequences(8, "balanced", max_depth=2) == 8  # Dyck words of height ≤ 2: 2^(n-1)
    draws = dyck.sample(5000, 6, "balanced", rng=np.random.default_rng(0))  # 5 words, uniform
    counts = Counter(map(bytes, draws.astype(np.uint8)))
    assert len(counts) == 5 and all(abs(c - 1000) < 120 for c in counts.values())  # ±3.8σ
    capped = dyck.sample(200, 12, "balanced", max_depth=2, rng=np.random.default_rng(1))
    assert dyck.depths(capped).max() <= 2
    a, b = dyck.dyck_split(100, 40, seed=7), dyck.dyck_split(100, 40, seed=7)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    rows = {tuple(r) for r in torch.cat([a.x_train, a.x_test]).tolist()}
    assert len(rows) == 140  # distinct, so train and test are disjoint
    assert not torch.equal(a.x_train, dyck.dyck_split(100, 40, seed=8).x_train)
    with pytest.raises(ValueError, match="exceeds the 5 distinct"):
        dyck.dyck_split(4, 2, length=6)
    with pytest.raises(ValueError, match="even"):
        dyck.dyck_split(4, 2, length=7)


def test_scan_grammar_has_the_published_number_of_commands():
    cmds = scan.commands()
    assert len(cmds) == len(set(cmds)) == scan.N_COMMANDS == 20910
    assert max(len(c.split()) for c in cmds) == scan.SRC_LEN
    assert max(len(scan.interpret(c)) for c in cmds) == scan.MAX_ACTIONS


@pytest.mark.parametrize("command, actions", [
    ("jump", "I_JUMP"),
    ("jump left", "I_TURN_LEFT I_JUMP"),
    ("turn right", "I_TURN_RIGHT"),
    ("jump around right", "I_TURN_RIGHT I_JUMP I_TURN_RIGHT I_JUMP I_TURN_RIGHT I_JUMP I_TURN_RIGHT I_JUMP"),
    ("turn left twice", "I_TURN_LEFT I_TURN_LEFT"),
    ("turn around left", "I_TURN_LEFT I_TURN_LEFT I_TURN_LEFT I_TURN_LEFT"),
    ("jump thrice", "I_JUMP I_JUMP I_JUMP"),
    ("jump twice after walk left", "I_TURN_LEFT I_WALK I_JUMP I_JUMP"),
    ("jump opposite left and walk thrice", "I_TURN_LEFT I_TURN_LEFT I_JUMP I_WALK I_WALK I_WALK"),
    ("jump opposite left after walk around left",
     "I_TURN_LEFT I_WALK I_TURN_LEFT I_WALK I_TURN_LEFT I_WALK I_TURN_LEFT I_WALK I_TURN_LEFT I_TURN_LEFT I_JUMP"),
    ("look opposite right thrice", " ".join(["I_TURN_RIGHT I_TURN_RIGHT I_LOOK"] * 3)),
])
def test_scan_interpretation(command, actions):
    assert command in scan.commands()
    assert " ".join(scan.interpret(command)) == actions


def test_scan_simple_split_and_encoding():
    s = scan.simple_split(seed=0)
    assert s.x_train.shape == (16728, scan.SRC_LEN + scan.TGT_LEN) and s.x_test.shape[0] == 4182
    assert s.y_train.shape == (16728, scan.TGT_LEN)
    rows = {tuple(r) for r in torch.cat([s.x_train, s.x_test])[:, : scan.SRC_LEN].tolist()}
    assert len(rows) == 20910  # every command exactly once across train ∪ test
    x, y = scan.encode(["jump twice after walk left"])
    assert scan.decode(y) == ["I_TURN_LEFT I_WALK I_JUMP I_JUMP"]
    assert x[0, scan.SRC_LEN] == scan.BOS and (x[0, scan.SRC_LEN + 1: scan.SRC_LEN + 5] == y[0, :4]).all()
    assert y[0, 4] == scan.EOS and (y[0, 5:] == -100).all() and (x[0, 5: scan.SRC_LEN] == scan.PAD).all()
    words = [scan.VOCAB[t] for t in x[0, :5].tolist()]
    assert " ".join(words) == "jump twice after walk left"
    small = scan.simple_split(seed=0, n_train=1000)
    assert small.x_train.shape[0] == 1000 and torch.equal(small.x_test, s.x_test)
    assert not torch.equal(scan.simple_split(seed=1).x_test, s.x_test)


def test_variable_length_words_are_balanced_padded_and_distinct():
    s = dyck.dyck_split(60, 40, length=12, seed=3, variable=True)
    x = torch.cat([s.x_train, s.x_test]).numpy()
    y = torch.cat([s.y_train, s.y_test]).numpy()
    assert len({r.tobytes() for r in x}) == 100  # distinct, so train and test are disjoint
    for row, target in zip(x, y, strict=True):
        n = int((row != dyck.PAD).sum())
        assert n % 2 == 0 and 2 <= n <= 12 and (row[n:] == dyck.PAD).all() and (row[:n] != dyck.PAD).all()
        assert dyck.is_valid(row[:n], "balanced")
        np.testing.assert_array_equal(target[:n], dyck.depths(row[:n]))
        assert (target[n:] == -100).all()
    lengths = (x != dyck.PAD).sum(1)
    assert len(set(lengths)) >= 4  # many word lengths
    with pytest.raises(ValueError, match="exceeds"):
        dyck.dyck_split(100, 100, length=6, variable=True)  # 1 + 2 + 5 words of 1–3 pairs
