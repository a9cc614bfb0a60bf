"""Fine-food reviews from Debian's r-cran-modeldata, read without R (SST-2 schema)."""

import shutil

import pytest

from gradience.tasks import reviews


def test_fine_foods_from_debian(tmp_path):
    train, test = reviews.build_fine_foods(tmp_path)
    a, b = reviews.read_jsonl(train), reviews.read_jsonl(test)
    assert (len(a), sum(r["label"] for r in a)) == (4000, 2600)  # 65 % "great" (5 stars)
    assert (len(b), sum(r["label"] for r in b)) == (1000, 658)
    assert b[0]["sentence"].startswith("These are the best tasting gummy fruits") and b[0]["label"] == 1


def test_missing_debian_tools_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(FileNotFoundError, match="apt-get download r-cran-modeldata"):
        reviews.debian_package(tmp_path)
