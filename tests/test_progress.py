"""The one progress bar is drawn on a terminal, and quiet in workers and in executed notebooks."""

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from gradience import progress


def _shown_in_worker(_: int) -> bool:
    return progress.shown()


def test_bar_is_shown_here_unless_asked_or_in_an_executed_notebook(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.shown() and not progress.shown(enabled=False)
    assert not progress.bar(range(3), desc="x").disable
    monkeypatch.setenv(progress.ENV, "0")  # what the report stage sets for the notebook's kernel
    assert not progress.shown() and progress.bar(range(3), desc="x").disable


def test_bar_is_quiet_in_a_worker_process(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        assert pool.submit(_shown_in_worker, 0).result() is False


def test_quiet_silences_bars_inside_the_block_and_restores_the_setting(monkeypatch):
    monkeypatch.setenv(progress.ENV, "1")
    with progress.quiet():
        assert not progress.shown()
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            assert pool.submit(_shown_in_worker, 0).result() is False
    assert progress.shown()
    with progress.quiet(False):
        assert progress.shown()
