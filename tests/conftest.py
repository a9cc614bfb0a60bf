import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """``data/`` rebuilt once per test session (a fresh clone has no data/ until `make study`)."""
    from gradience.data import build

    folder = tmp_path_factory.mktemp("data")
    build(folder)
    return folder
