"""The site of the executed notebooks (`make site`), checked in a real browser.

Headless Chromium, driven over the Chrome DevTools Protocol (websocket-client, no selenium), opens the
front page, every study page, the glossary and a search, served over HTTP from the build: every figure
loaded (naturalWidth > 0, as many as the notebook has PNG outputs), every internal link names a file of
the build (and its #anchor an id in it), and the console shows no error. Screenshots of the front page
(its top and its scoreboard) and one study page (its top and its first figure) go to .gradience/site/screenshots/. Skips, saying what to run, without the `site`
extra or a Chromium (`make site` installs both; Chromium with apt-get, where there is one).
"""

import base64
import functools
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from conftest import REPO

SITE = Path(REPO, ".gradience", "site")
HTML = SITE / "html"
STUDY_SHOT = "grokking"
CHROMIUM = next(
    (c for c in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome") if c and shutil.which(c)),
    None,
)
MISSING = [m for m in ("sphinx", "myst_nb", "sphinx_book_theme", "websocket") if importlib.util.find_spec(m) is None]

pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"the site extra is missing ({', '.join(MISSING)}): run `make site`"),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium on PATH: `make site` installs Debian's chromium with apt-get; without apt-get, "
        "install Chromium or Chrome and put it on PATH (or set CHROMIUM=/path/to/it)",
    ),
]


def _studies() -> list[str]:
    from gradience.studies.registry import STAGES

    return list(STAGES)


@pytest.fixture(scope="module")
def site() -> Path:
    """The built site: built again when absent or older than a source it shows (while a stage reruns,
    its notebook is missing from reports/ and an existing build is used as it is)."""
    index = HTML / "index.html"
    notebooks = [Path(REPO, "reports/synthesis/synthesis.ipynb")] + [Path(REPO, "reports", s, f"{s}.ipynb") for s in _studies()]
    sources = [*notebooks, Path(REPO, "docs/glossary.md"), *(p for p in Path(REPO, "docs/site").rglob("*") if p.is_file())]
    present = [p.stat().st_mtime for p in sources if p.exists()]
    if not index.exists() or (len(present) == len(sources) and index.stat().st_mtime < max(present)):
        subprocess.run([sys.executable, "docs/site/build.py", str(SITE)], cwd=REPO, check=True)
    return HTML


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


class Browser:
    """One headless Chromium tab over CDP; console errors, exceptions and failed loads are collected."""

    def __init__(self, profile: Path):
        import websocket

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"{CHROMIUM} did not start its DevTools endpoint within 30 s")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.ids, self.events, self.errors = 0, [], []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)

    def _read(self) -> dict:
        msg = json.loads(self.ws.recv())
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append("exception: " + d.get("exception", {}).get("description", d["text"]))
        # the browser's own request for /favicon.ico (the theme declares no icon) is not the page's
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error" and not p["entry"].get("url", "").endswith("/favicon.ico"):
            self.errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        return msg

    def call(self, method: str, **params):
        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:
            msg = self._read()
            if msg.get("id") == self.ids:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            if "method" in msg:
                self.events.append(msg["method"])

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while "Page.loadEventFired" not in self.events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading in 60 s")
            msg = self._read()
            if "method" in msg:
                self.events.append(msg["method"])

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        if getattr(self, "ws", None):
            self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium"))
    yield b
    b.close()


def _pngs(page: str) -> int:
    """PNG outputs of the notebook the page was built from (its copy in the site's sources)."""
    nb = nbformat.read(SITE / "src" / f"{page}.ipynb", as_version=4)
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def _check_links(site: Path, origin: str, hrefs: list[str]) -> list[str]:
    """The internal hrefs that name no file of the build, or an #anchor with no such id in it."""
    broken = []
    for href in hrefs:
        u = urlsplit(href)
        if f"{u.scheme}://{u.netloc}" != origin:
            continue
        target = site / unquote(u.path).lstrip("/")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            broken.append(href)
        elif u.fragment and target.suffix == ".html":
            if not re.search(rf'id="{re.escape(unquote(u.fragment))}"', target.read_text(errors="ignore")):
                broken.append(href)
    return broken


PAGE_STATE = """(() => ({
  title: document.title,
  images: [...document.querySelectorAll('article img')].map(i => ({src: i.src, ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth})),
  allImagesOk: [...document.images].every(i => i.complete && i.naturalWidth > 0),
  hrefs: [...document.querySelectorAll('a[href]')].map(a => a.href),
  nav: [...document.querySelectorAll('nav.bd-links a')].map(a => a.getAttribute('href')),
  zoomable: [...document.querySelectorAll('article img')].every(i => i.closest('a.figure-full-size')?.href === i.src),
  tables: document.querySelectorAll('article table').length,
  findings: [...document.querySelectorAll('article h1, article h2, article h3')].some(h => /Findings/i.test(h.textContent)),
  search: !!document.querySelector('form[action*="search"], .search-button, #search-input, input[name="q"]'),
}))()"""


@pytest.mark.parametrize("page", ["index", *_studies(), "glossary"])
def test_page_renders_every_figure_and_link_with_a_clean_console(site, server, browser, page):
    browser.errors.clear()
    browser.open(f"{server}/{page}.html")
    state = browser.js(PAGE_STATE)
    assert not browser.errors, f"{page}.html: console errors {browser.errors}"
    expected = _pngs(page) if page != "glossary" else 0
    assert len(state["images"]) == expected, f"{page}.html shows {len(state['images'])} figures, its notebook has {expected}"
    assert all(i["ok"] for i in state["images"]) and state["allImagesOk"], [i["src"] for i in state["images"] if not i["ok"]]
    assert state["zoomable"], f"{page}.html: a figure does not link to itself at full size (docs/site/_static/figures.js)"
    assert not _check_links(site, server, state["hrefs"]), f"{page}.html: broken internal links {_check_links(site, server, state['hrefs'])}"
    # navigation: the sidebar lists the front page, every study and the glossary; a search box is there
    nav = {h.split("#")[0].rsplit("/", 1)[-1] or f"{page}.html" for h in state["nav"]}  # "#": this page
    assert {f"{s}.html" for s in _studies()} | {"glossary.html"} <= nav, nav
    assert state["search"], f"{page}.html has no search box"
    if page in _studies():
        assert state["findings"] and state["tables"] >= 1, f"{page}.html: no Findings table"
    if page == "index":
        assert browser.js("document.querySelector('article').textContent.includes('The scoreboard')")
        assert state["tables"] >= 1
    if page in ("index", STUDY_SHOT):
        browser.screenshot(SITE / "screenshots" / f"{page}.png")
    if page in ("index", STUDY_SHOT):  # the scoreboard / the first figure at the top of the window
        target = "section#the-scoreboard" if page == "index" else "img"
        browser.js(f"document.querySelector('article {target}').scrollIntoView()")
        browser.screenshot(SITE / "screenshots" / f"{page}-{'scoreboard' if page == 'index' else 'figure'}.png")


def test_search_finds_the_study_pages(server, browser):
    browser.errors.clear()
    browser.open(f"{server}/search.html?q=grokking")
    hits = browser.js("""new Promise(done => { const t0 = Date.now(); (function poll() {
        const hits = [...document.querySelectorAll('#search-results li a')].map(a => a.getAttribute('href'));
        if (hits.length || Date.now() - t0 > 15000) done(hits); else setTimeout(poll, 200); })(); })""")
    assert not browser.errors, browser.errors
    assert any(h.split("?")[0].split("#")[0].endswith("grokking.html") for h in hits), hits
