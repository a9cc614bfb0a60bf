"""The 8×8 handwritten digits that ship with scikit-learn (1,797 images, 10 classes).

Stored as ``data/digits/images.npy`` (float32, 0–16, shape 1797×8×8) and ``labels.npy`` (int64):
``.npy`` files are byte-for-byte reproducible, unlike ``.npz`` archives (zip timestamps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gradience.tasks import Split, random_split_indices


def build_digits(folder: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    np.save(Path(folder) / "images.npy", d.images.astype(np.float32))
    np.save(Path(folder) / "labels.npy", d.target.astype(np.int64))


def digits_split(data_dir: Path, train_fraction: float, seed: int, flatten: bool = False) -> Split:
    """Images scaled to [0, 1] with a channel axis (``N×1×8×8``), or flattened to 64 features."""
    folder = Path(data_dir) / "digits"
    if not (folder / "images.npy").exists():
        raise FileNotFoundError(f"missing data: {folder}/images.npy; run `gradience data` to rebuild data/")
    x = torch.from_numpy(np.load(folder / "images.npy")) / 16.0
    y = torch.from_numpy(np.load(folder / "labels.npy"))
    x = x.reshape(len(x), -1) if flatten else x[:, None]
    tr, te = random_split_indices(len(x), train_fraction, seed)
    return Split(x[tr], y[tr], x[te], y[te])
