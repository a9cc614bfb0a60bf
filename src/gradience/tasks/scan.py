"""SCAN (Lake & Baroni 2018): navigation commands and their action sequences, generated from the grammar.

Grammar (every command of it, 20,910 in all)::

    C → S and S | S after S | S        S → V twice | V thrice | V
    V → X opposite L | X around L | D | U
    D → X L                            X → U | turn
    U → walk | look | run | jump       L → left | right

(10 + 10 + 10 + 4 = 34 verbs V, 102 phrases S, 102 + 2·102² commands). Interpretation:
``walk`` → I_WALK (look, run, jump alike); ``turn L`` → I_TURN_L; ``u L`` → I_TURN_L u;
``X opposite L`` → I_TURN_L I_TURN_L X; ``X around L`` → (I_TURN_L X) × 4 (X contributes no
action for ``turn``); ``s twice``/``thrice`` repeat s; ``s1 and s2`` → s1 s2; ``s1 after s2`` → s2 s1.

The "simple" split here is a seeded uniform 80/20 draw over all commands (16,728 / 4,182 — the
published split's sizes; the published files are a particular draw of the same kind and are not
downloaded). Tokens share one vocabulary (:data:`VOCAB`). For an encoder–decoder trained by
:func:`gradience.training.train` (which calls ``model(x)``), ``x = [source | decoder input]``:
the command words padded to :data:`SRC_LEN` (9), then ``<bos>`` + actions padded to
:data:`TGT_LEN` (49); ``y`` = actions + ``<eos>``, padded with −100 (ignored by the loss). Padding
token ``<pad>`` = 0.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from gradience.tasks import Split, random_split_indices

PRIMITIVES = ("walk", "look", "run", "jump")
DIRECTIONS = ("left", "right")
ACTIONS = ("I_WALK", "I_LOOK", "I_RUN", "I_JUMP", "I_TURN_LEFT", "I_TURN_RIGHT")
WORDS = PRIMITIVES + ("turn",) + DIRECTIONS + ("opposite", "around", "twice", "thrice", "and", "after")
SPECIALS = ("<pad>", "<bos>", "<eos>")
VOCAB = SPECIALS + ACTIONS + WORDS
TOKEN = {w: i for i, w in enumerate(VOCAB)}
PAD, BOS, EOS = 0, 1, 2
SRC_LEN = 9  # longest command: "jump around left thrice and walk around right thrice"
MAX_ACTIONS = 48  # its 24 + 24 actions
TGT_LEN = MAX_ACTIONS + 1
N_COMMANDS = 20910
IGNORE = -100


def _verbs() -> list[str]:
    units = list(PRIMITIVES)
    directed = [f"{x} {d}" for x in units + ["turn"] for d in DIRECTIONS]
    opposite = [f"{x} opposite {d}" for x in units + ["turn"] for d in DIRECTIONS]
    around = [f"{x} around {d}" for x in units + ["turn"] for d in DIRECTIONS]
    return opposite + around + directed + units


def _phrases() -> list[str]:
    return [f"{v}{rep}" for v in _verbs() for rep in ("", " twice", " thrice")]


@cache
def commands() -> tuple[str, ...]:
    """Every command of the grammar, in a fixed order (single phrases, then ``and``, then ``after``)."""
    s = _phrases()
    return tuple(s + [f"{a} {c} {b}" for c in ("and", "after") for a in s for b in s])


def _turn(d: str) -> str:
    return "I_TURN_LEFT" if d == "left" else "I_TURN_RIGHT"


def _verb(words: list[str]) -> list[str]:
    x = words[0]
    act = [] if x == "turn" else [f"I_{x.upper()}"]
    if len(words) == 1:
        if x == "turn":
            raise ValueError("'turn' needs a direction")
        return act
    if len(words) == 2:
        return [_turn(words[1])] + act
    if words[1] == "opposite":
        return [_turn(words[2])] * 2 + act
    if words[1] == "around":
        return ([_turn(words[2])] + act) * 4
    raise ValueError(f"not a SCAN verb phrase: {' '.join(words)!r}")


def _phrase(words: list[str]) -> list[str]:
    if words and words[-1] in ("twice", "thrice"):
        return _verb(words[:-1]) * (2 if words[-1] == "twice" else 3)
    return _verb(words)


def interpret(command: str) -> list[str]:
    """The action sequence of a SCAN command (the grammar's interpretation function)."""
    words = command.split()
    for conj in ("and", "after"):
        if conj in words:
            i = words.index(conj)
            first, second = _phrase(words[:i]), _phrase(words[i + 1:])
            return first + second if conj == "and" else second + first
    return _phrase(words)


def encode(commands_: list[str] | tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` as in the module docstring: x ``[n, SRC_LEN + TGT_LEN]``, y ``[n, TGT_LEN]``."""
    n = len(commands_)
    x = np.full((n, SRC_LEN + TGT_LEN), PAD, dtype=np.int64)
    y = np.full((n, TGT_LEN), IGNORE, dtype=np.int64)
    for i, c in enumerate(commands_):
        src = [TOKEN[w] for w in c.split()]
        act = [TOKEN[a] for a in interpret(c)]
        if len(src) > SRC_LEN or len(act) > MAX_ACTIONS:
            raise ValueError(f"command too long for the fixed layout: {c!r}")
        x[i, :len(src)] = src
        x[i, SRC_LEN:SRC_LEN + 1 + len(act)] = [BOS] + act
        y[i, :len(act) + 1] = act + [EOS]
    return torch.as_tensor(x), torch.as_tensor(y)


def decode(ids: torch.Tensor | np.ndarray) -> list[str]:
    """Action strings of target rows (stop at ``<eos>``, skip padding and −100)."""
    out = []
    for row in np.asarray(ids):
        words = []
        for t in row:
            if t == EOS:
                break
            if t >= 0 and VOCAB[t] not in SPECIALS:
                words.append(VOCAB[t])
        out.append(" ".join(words))
    return out


def simple_split(seed: int = 0, train_fraction: float = 0.8, n_train: int = 0) -> Split:
    """Seeded random split of all commands (80/20: 16,728 / 4,182); ``n_train`` > 0 keeps only the first
    ``n_train`` training commands (a smaller training set; the test set is unchanged)."""
    cmds = commands()
    tr, te = random_split_indices(len(cmds), train_fraction, seed)
    if n_train:
        if n_train > len(tr):
            raise ValueError(f"n_train = {n_train} exceeds the {len(tr)} training commands")
        tr = tr[:n_train]
    x, y = encode(cmds)
    return Split(x[tr], y[tr], x[te], y[te])


def trim(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` cut to the longest target of the batch: columns past it hold only padding (never scored, and
    invisible to earlier positions under the causal mask), so the loss and accuracy are unchanged."""
    n = int((y != IGNORE).sum(1).max())
    return x[:, : SRC_LEN + n], y[:, :n]
