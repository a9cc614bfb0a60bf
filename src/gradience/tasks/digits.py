"""The 8×8 handwritten digits that ship with scikit-learn (1,797 images, 10 classes).

Stored as ``data/digits/images.npy`` (float32, 0–16, shape 1797×8×8) and ``labels.npy`` (int64):
``.npy`` files are byte-for-byte reproducible, unlike ``.npz`` archives (zip timestamps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gradience.tasks import Split, corrupted_data, missing_data, random_split_indices


def build_digits(folder: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    np.save(Path(folder) / "images.npy", d.images.astype(np.float32))
    np.save(Path(folder) / "labels.npy", d.target.astype(np.int64))


def load_digits_arrays(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``images.npy`` and ``labels.npy``; an error naming the file when one is missing or unreadable."""
    folder = Path(data_dir) / "digits"
    arrays = []
    for name, dtype, ndim in (("images.npy", np.float32, 3), ("labels.npy", np.int64, 1)):
        path = folder / name
        if not path.exists():
            raise missing_data(path)
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise corrupted_data(path, f"not a readable .npy array: {exc}") from None
        if a.dtype != dtype or a.ndim != ndim or len(a) == 0:
            raise corrupted_data(path, f"expected a {ndim}-d {np.dtype(dtype)} array, got {a.dtype} of shape {a.shape}")
        arrays.append(a)
    images, labels = arrays
    if len(images) != len(labels) or images.shape[1:] != (8, 8) or labels.min() < 0 or labels.max() > 9:
        raise corrupted_data(folder, f"images {images.shape} and labels {labels.shape} (0–9) do not match")
    return images, labels


def digits_split(data_dir: Path, train_fraction: float, seed: int, flatten: bool = False) -> Split:
    """Images scaled to [0, 1] with a channel axis (``N×1×8×8``), or flattened to 64 features."""
    images, labels = load_digits_arrays(data_dir)
    x = torch.from_numpy(images) / 16.0
    y = torch.from_numpy(labels)
    x = x.reshape(len(x), -1) if flatten else x[:, None]
    tr, te = random_split_indices(len(x), train_fraction, seed)
    return Split(x[tr], y[tr], x[te], y[te])
