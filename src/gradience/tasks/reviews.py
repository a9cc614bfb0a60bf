"""Binary sentiment in the SST-2 schema: records ``{"sentence", "label"}`` (1 = positive).

* default profile: Amazon fine-food reviews from the Debian package ``r-cran-modeldata`` (object
  ``small_fine_foods``: ``training_data`` 4000 and ``testing_data`` 1000 reviews; label 1 for
  ``score == "great"`` (5 stars), 0 for ``"other"``). No R is needed: the package is fetched with
  ``apt-get download``, unpacked with ``dpkg -x``, and its R lazy-load database read with PyPI
  ``rdata`` (:func:`read_lazyload`); :func:`build_fine_foods` writes ``train.jsonl`` / ``test.jsonl``.
* paper profile: SST-2 through ``datasets`` at a pinned revision (:func:`hub_sst2`, needs the hub).
* tests: any local JSONL file in the same schema (:func:`read_jsonl`).
"""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
import tempfile
import warnings
import zlib
from pathlib import Path

from gradience.tasks.jsonl import read_records, write_records

DEBIAN_PACKAGE = "r-cran-modeldata"
LAZYLOAD = "usr/lib/R/site-library/modeldata/data/Rdata"
SST2_DATASET = ("stanfordnlp/sst2", None)
DOWNLOADS = Path(".gradience/downloads")


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of an SST-2-schema JSONL file; a clear error when the file or a field is missing."""
    return read_records(path, lambda r: {"sentence", "label"} <= r.keys() and r["label"] in (0, 1),
                        "an SST-2 record needs 'sentence' and 'label' in {0, 1}",
                        "gradience.tasks.reviews.build_fine_foods")


def debian_package(downloads: Path = DOWNLOADS) -> Path:
    """The ``r-cran-modeldata`` .deb, fetched with ``apt-get download`` if not cached."""
    found = sorted(Path(downloads).glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise FileNotFoundError(
            f"missing data: the fine-food reviews come from the Debian package {DEBIAN_PACKAGE}, and this "
            f"system has no apt-get/dpkg. On a Debian or Ubuntu machine run `apt-get download {DEBIAN_PACKAGE}` "
            f"and copy the .deb into {Path(downloads).resolve()}/, then rebuild the data.")
    Path(downloads).mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=downloads, capture_output=True, text=True)
    found = sorted(Path(downloads).glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if res.returncode or not found:
        raise FileNotFoundError(
            f"missing data: `apt-get download {DEBIAN_PACKAGE}` failed ({res.stderr.strip()}); run "
            f"`apt-get update` first (as root), or place the .deb in {Path(downloads).resolve()}/")
    return found[-1]


def _entry(blob: bytes) -> bytes:
    """Decompress one R lazy-load entry: 4-byte big-endian length, then a type byte for R's
    ``compress = 2/3`` formats ('Z' raw LZMA2, '2' bzip2, '1' zlib, '0' none) or zlib data directly."""
    kind = blob[4:5]
    if kind == b"Z":
        return lzma.decompress(blob[5:], format=lzma.FORMAT_RAW,
                               filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])
    if kind == b"2":
        import bz2

        return bz2.decompress(blob[5:])
    if kind == b"1":
        return zlib.decompress(blob[5:])
    if kind == b"0":
        return blob[5:]
    return zlib.decompress(blob[4:])


def read_lazyload(stem: str | Path, names: tuple[str, ...]) -> dict:
    """Objects ``names`` of an R lazy-load database (``stem.rdx`` index + ``stem.rdb``) as Python objects."""
    import rdata

    stem = Path(stem)
    with warnings.catch_warnings():  # rdata warns that ".rdx" is not a known extension of an RDS file
        warnings.simplefilter("ignore", UserWarning)
        index = rdata.conversion.convert(rdata.parser.parse_file(stem.with_suffix(".rdx")))
    raw = stem.with_suffix(".rdb").read_bytes()
    out = {}
    for name in names:
        if name not in index["variables"]:
            raise KeyError(f"{name!r} is not in {stem}.rdx (has {sorted(map(str, index['variables']))})")
        offset, length = (int(v) for v in index["variables"][name])
        blob = raw[offset:offset + length]
        size = struct.unpack(">I", blob[:4])[0]
        data = _entry(blob)
        if len(data) != size:
            raise ValueError(f"{name}: decompressed {len(data)} bytes, the index says {size}")
        out[name] = rdata.conversion.convert(rdata.parser.parse_data(data))
    return out


def fine_foods(deb: Path | None = None) -> dict[str, list[dict]]:
    """``{"train": [...], "test": [...]}`` SST-2-schema records of ``small_fine_foods``."""
    deb = deb if deb is not None else debian_package()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg", "-x", str(deb), tmp], check=True)
        frames = read_lazyload(Path(tmp) / LAZYLOAD, ("training_data", "testing_data"))
    return {split: [{"sentence": " ".join(str(t).split()), "label": int(s == "great")}
                    for t, s in zip(df["review"], df["score"], strict=True)]
            for split, df in (("train", frames["training_data"]), ("test", frames["testing_data"]))}


def build_fine_foods(folder: str | Path) -> list[Path]:
    """Write ``train.jsonl`` (4000) and ``test.jsonl`` (1000) under ``folder``; deterministic bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_records(records, folder / f"{split}.jsonl") for split, records in fine_foods().items()]


def hub_sst2(split: str, revision: str) -> list[dict]:
    """SST-2 through ``datasets`` at ``revision`` (paper profile; needs the hub)."""
    from datasets import load_dataset

    name, config = SST2_DATASET
    ds = load_dataset(name, config, split=split, revision=revision)
    return [{"sentence": r["sentence"], "label": int(r["label"])} for r in ds]
