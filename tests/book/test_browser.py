"""Open every page of the built book in a real (headless) Chromium.

Checks, page by page, over a local HTTP server on 127.0.0.1:
  * no broken image (naturalWidth > 0);
  * no SEVERE console message, no HTTP response >= 400;
  * no request to any host other than 127.0.0.1 / localhost (CDP network
    events from ChromeDriver's performance log);
  * pages with math get it typeset by the vendored MathJax (mjx-container);
  * every <figure> has a numbered caption "Fig. N".
Then, as a reader at a 1280 px window sees the pages:
  * nothing is wider than the page column (the article): an element past its edge
    must sit in a box that scrolls horizontally and itself fits (a table's wrapper);
  * every figure's text renders at 11 px or more: the PNG records its smallest font
    and dpi (lsslib.report.save_figure), and px = pt * dpi / 72 * shown / PNG width;
  * no local filesystem path (/root/, /home/, /work/, /tmp/) in any page's text;
  * commands keep their "--": no en dash in any <code>/<pre>, and none before an
    option name anywhere in a page's text.
Each of these checks is also run once on a page with a planted fault, so that a
check that cannot fail fails the test.
Then: the built-in search finds the results page for "accuracy"; one page
opened through file:// typesets its math; full-page screenshots of the intro,
results, study, rank and schedule ablation, reproduce and GPU pages go to
<BOOK_HTML>/../screenshots/ (_build/screenshots/ by default).

The book directory comes from $BOOK_HTML (default _build/html, relative to the
repository root). An unbuilt book is a failure, not a skip: run `make book`.

Installs what is missing: Debian's chromium + chromium-driver (apt-get) and
selenium (pip). No browser is downloaded from anywhere else.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# chrome:// and friends are the browser's own built-in pages, not the network.
LOCAL_SCHEMES = {"data", "blob", "about", "chrome", "chrome-untrusted", "devtools"}
MATH_WAIT_S = 20


# --------------------------------------------------------------------------- setup


def _ensure_chromium() -> None:
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(
            [*sudo, "apt-get", "update"], check=True, env=env, capture_output=True, timeout=300
        )
        subprocess.run(
            [
                *sudo,
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                "chromium",
                "chromium-driver",
            ],
            check=True,
            env=env,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"could not install Debian chromium + chromium-driver: {exc}")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("apt-get ran but /usr/bin/chromium or /usr/bin/chromedriver is missing")


def _ensure_selenium():
    try:
        import selenium  # noqa: F401
    except ImportError:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "selenium>=4.20"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            pytest.fail("could not pip install selenium:\n" + proc.stderr[-2000:])
    import selenium.webdriver

    return selenium.webdriver


def _book_dir() -> Path:
    book = Path(os.environ.get("BOOK_HTML", "_build/html"))
    if not book.is_absolute():
        book = REPO / book
    if not (book / "index.html").is_file():
        pytest.fail(f"the book is not built: {book}/index.html is missing (run `make book`)")
    return book.resolve()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def book() -> Path:
    return _book_dir()


@pytest.fixture(scope="module")
def server(book):
    handler = functools.partial(_QuietHandler, directory=str(book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def driver():
    _ensure_chromium()
    webdriver = _ensure_selenium()
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
    profile = tempfile.mkdtemp(prefix="lss-book-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(60)
    # Let the browser's own start page settle, then forget its events: only the
    # book's requests are under test.
    drv.get("about:blank")
    time.sleep(1.0)
    drv.get_log("performance")
    drv.get_log("browser")
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------- helpers


def _pages(book: Path) -> list[str]:
    pages = sorted(
        p.relative_to(book).as_posix()
        for p in book.rglob("*.html")
        if not p.relative_to(book).parts[0].startswith(("_static", "_sources"))
    )
    assert "index.html" in pages and "results.html" in pages, pages
    return pages


def _drain_logs(drv) -> tuple[list[dict], list[dict]]:
    """(CDP network events of the page under test, console entries) since the last call.

    Events of other targets (the browser's own start page, for instance) are
    dropped: ChromeDriver tags each event with its target, which for a page is
    the window handle.
    """
    tab = drv.current_window_handle
    events = []
    for entry in drv.get_log("performance"):
        record = json.loads(entry["message"])
        if record.get("webview") in (None, tab):
            events.append(record["message"])
    console = drv.get_log("browser")
    return events, console


def _network_problems(events: list[dict], allow_file: bool = False) -> list[str]:
    problems = []
    urls = {
        ev["params"]["requestId"]: ev["params"]["request"]["url"]
        for ev in events
        if ev.get("method") == "Network.requestWillBeSent"
    }
    for ev in events:
        method, params = ev.get("method", ""), ev.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
        elif method == "Network.webSocketCreated":
            url = params["url"]
        elif method == "Network.responseReceived":
            status = params["response"].get("status", 0)
            if status >= 400:
                problems.append(f"HTTP {status}: {params['response']['url']}")
            continue
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            url = urls.get(params.get("requestId"), "(url not logged)")
            problems.append(f"loading failed ({params.get('errorText')}): {url[:200]}")
            continue
        else:
            continue
        parsed = urlparse(url)
        if parsed.scheme in LOCAL_SCHEMES or (allow_file and parsed.scheme == "file"):
            continue
        if parsed.scheme in {"http", "https", "ws", "wss"} and parsed.hostname in LOCAL_HOSTS:
            continue
        problems.append(f"request leaves the machine: {url[:200]}")
    return problems


def _wait(drv, js: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if drv.execute_script(js):
            return True
        time.sleep(0.1)
    return False


HAS_MATH = "return document.querySelector('.math, mjx-container, .MathJax') !== null;"
MATH_DONE = (
    "return document.querySelectorAll('mjx-container').length > 0 && "
    "document.querySelectorAll('mjx-merror, .mjx-merror').length === 0;"
)
BROKEN_IMAGES = """
return Array.from(document.images)
  .filter(img => !(img.complete && img.naturalWidth > 0))
  .map(img => img.getAttribute('src'));
"""
FIGURE_CAPTIONS = """
return Array.from(document.querySelectorAll('figure')).map(f => {
  const cap = f.querySelector('figcaption');
  return [f.id || '(no id)', cap ? cap.innerText.trim() : ''];
});
"""
FIG_NUMBER = re.compile(r"^Fig\.\s*\d+(\.\d+)*\b")


# ----------------------------------------------------------------------- tests


def test_every_page(book, server, driver):
    pages = _pages(book)
    failures: dict[str, list[str]] = {}
    math_pages = 0
    _drain_logs(driver)
    for page in pages:
        driver.get(f"{server}/{page}")
        _wait(driver, "return document.readyState === 'complete';", 30)
        problems = []
        if driver.execute_script(HAS_MATH):
            math_pages += 1
            if not _wait(driver, MATH_DONE, MATH_WAIT_S):
                problems.append("math present but not typeset by MathJax (no mjx-container)")
        broken = driver.execute_script(BROKEN_IMAGES)
        problems += [f"broken image: {src}" for src in broken]
        for fig_id, caption in driver.execute_script(FIGURE_CAPTIONS):
            if not FIG_NUMBER.match(caption):
                problems.append(f"figure {fig_id} has no numbered caption: {caption[:80]!r}")
        time.sleep(0.3)  # late requests (fonts) reach the log
        events, console = _drain_logs(driver)
        problems += _network_problems(events)
        problems += [
            f"console {e['level']}: {e['message'][:300]}" for e in console if e["level"] == "SEVERE"
        ]
        if problems:
            failures[page] = problems
    assert math_pages >= 2, "expected math on several pages (method.html at least)"
    assert not failures, json.dumps(failures, indent=2)


def test_search_finds_results_page(server, driver):
    driver.get(f"{server}/search.html?q=accuracy")
    found = _wait(
        driver,
        "return document.querySelector('#search-results a[href*=\"results.html\"]') !== null;",
        30,
    )
    hits = driver.execute_script(
        "return Array.from(document.querySelectorAll('#search-results a'))"
        ".map(a => a.getAttribute('href'));"
    )
    assert found, f"search for 'accuracy' did not list results.html; hits: {hits}"
    events, _ = _drain_logs(driver)
    assert not _network_problems(events)


def test_math_over_file_url(book, driver):
    driver.get((book / "method.html").as_uri())
    assert _wait(driver, MATH_DONE, MATH_WAIT_S), "MathJax did not typeset method.html over file://"
    events, console = _drain_logs(driver)
    assert not _network_problems(events, allow_file=True)
    severe = [e["message"] for e in console if e["level"] == "SEVERE"]
    assert not severe, severe


SCREENSHOTS = {
    "intro": "intro.html",
    "results": "results.html",
    "study": "study.html",
    "ablation_rank": "ablation_rank.html",
    "ablation_schedule": "ablation_schedule.html",
    "reproduce": "reproduce.html",
    "gpu": "gpu.html",
}


def test_screenshots(book, server, driver):
    """Full-page screenshots at 1280 px of the pages a reader opens first."""
    shots = book.parent / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        for name, page in SCREENSHOTS.items():
            driver.set_window_size(1280, 1600)
            driver.get(f"{server}/{page}")
            _wait(driver, "return document.readyState === 'complete';", 30)
            _wait(driver, MATH_DONE.replace("> 0", ">= 0"), 5)
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.set_window_size(1280, min(int(height) + 100, 12000))
            time.sleep(0.5)
            target = shots / f"{name}.png"
            assert driver.save_screenshot(str(target)), f"screenshot of {page} failed"
            assert target.stat().st_size > 10_000, target
    finally:
        driver.set_window_size(1280, 1600)


# ------------------------------------------------------- what a reader sees at 1280 px

# Elements past the article's edges that are not inside a horizontally scrolling box
# which itself fits the article. A closed dropdown's content has no size and is skipped.
OVERFLOW = """
const col = document.querySelector('article.bd-article') || document.querySelector('main');
const box = col.getBoundingClientRect();
const bad = [];
if (col.scrollWidth > col.clientWidth + 1) {
  bad.push(`the column scrolls: ${col.scrollWidth} > ${col.clientWidth} px`);
}
for (const el of col.querySelectorAll('*')) {
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) continue;
  if (r.right <= box.right + 1 && r.left >= box.left - 1) continue;
  let p = el.parentElement, inBox = false;
  while (p && p !== col) {
    const ox = getComputedStyle(p).overflowX;
    const pr = p.getBoundingClientRect();
    if ((ox === 'auto' || ox === 'scroll') && pr.right <= box.right + 1 && pr.left >= box.left - 1) {
      inBox = true;
      break;
    }
    p = p.parentElement;
  }
  if (!inBox) {
    const what = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
      (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ')[0] : '');
    bad.push(`${what}: ${Math.round(r.left)}-${Math.round(r.right)} px, column ` +
             `${Math.round(box.left)}-${Math.round(box.right)} px`);
  }
}
return bad.slice(0, 5);
"""
PLANT_WIDE = """
const d = document.createElement('div');
d.style.width = '3000px'; d.textContent = 'planted';
(document.querySelector('article.bd-article') || document.querySelector('main')).appendChild(d);
"""
# Every image of the article: its URL, shown width and PNG width, and the column's width.
IMAGES = """
const col = document.querySelector('article.bd-article') || document.querySelector('main');
return Array.from(col.querySelectorAll('img')).map(img => [
  img.currentSrc || img.src, img.clientWidth, img.naturalWidth, col.clientWidth]);
"""
PAGE_TEXT = "return document.body.innerText;"
CODE_TEXTS = "return Array.from(document.querySelectorAll('code, pre')).map(e => e.textContent);"
LOCAL_PATH = re.compile(r"(?<![\w.~-])/(?:root|home|work|tmp|Users)/\S*")
# an en dash where a command had "--": right before an option name
DASHED_OPTION = re.compile(r"(?:^|\s)\u2013[a-z][\w-]*")
MIN_TEXT_PX = 11.0


def _reader_pages(book: Path) -> list[str]:
    return [p for p in _pages(book) if p not in ("search.html", "genindex.html")]


def _open(driver, server: str, page: str) -> None:
    driver.get(f"{server}/{page}")
    _wait(driver, "return document.readyState === 'complete';", 30)


def _figure_text_problems(book: Path, server: str, images: list) -> list[str]:
    """Images whose smallest text renders below MIN_TEXT_PX, or that do not say."""
    from PIL import Image

    problems = []
    for src, shown, natural, column in images:
        parsed = urlparse(src)
        if parsed.scheme == "data" or not parsed.path.lower().endswith(".png"):
            problems.append(f"{src[:80]}: not a PNG from lsslib.plots (no font record)")
            continue
        path = book / parsed.path.lstrip("/")
        with Image.open(path) as im:
            meta, width = dict(im.text), im.size[0]
        if "lss:min_font_pt" not in meta or "lss:dpi" not in meta:
            problems.append(f"{parsed.path}: no lss:min_font_pt / lss:dpi in the PNG")
            continue
        rendered = shown if shown > 0 else min(natural or width, column)
        px = float(meta["lss:min_font_pt"]) * float(meta["lss:dpi"]) / 72 * rendered / width
        if not px >= MIN_TEXT_PX:
            problems.append(
                f"{parsed.path}: smallest text {px:.1f} px "
                f"({meta['lss:min_font_pt']} pt at {meta['lss:dpi']} dpi, {width} px shown at {rendered})"
            )
    return problems


def _text_problems(text: str, codes: list[str]) -> list[str]:
    problems = [f"local path: {m.group(0)[:80]}" for m in LOCAL_PATH.finditer(text)]
    problems += [f"en dash in code: {c.strip()[:80]!r}" for c in codes if "\u2013" in c]
    problems += [f"en dash for '--': {m.group(0).strip()!r}" for m in DASHED_OPTION.finditer(text)]
    return problems


def test_nothing_wider_than_the_column(server, book, driver):
    failures = {}
    for page in _reader_pages(book):
        _open(driver, server, page)
        bad = driver.execute_script(OVERFLOW)
        if bad:
            failures[page] = bad
    assert not failures, json.dumps(failures, indent=2)
    # the check itself can fail: a planted 3000 px element is found
    _open(driver, server, "results.html")
    driver.execute_script(PLANT_WIDE)
    assert driver.execute_script(OVERFLOW), "the overflow check missed a planted 3000 px element"


def test_figure_text_is_legible(server, book, driver):
    failures, seen = {}, 0
    for page in _reader_pages(book):
        _open(driver, server, page)
        images = driver.execute_script(IMAGES)
        seen += len(images)
        problems = _figure_text_problems(book, server, images)
        if problems:
            failures[page] = problems
    assert seen >= 10, f"expected the book's figures, found {seen} images"
    assert not failures, json.dumps(failures, indent=2)
    # the check itself can fail: the same figure shown at a tenth of its width
    _open(driver, server, "results.html")
    src, _, natural, column = driver.execute_script(IMAGES)[0]
    assert _figure_text_problems(book, server, [[src, max(1, natural // 10), natural, column]])


def test_no_local_paths_and_commands_keep_their_dashes(server, book, driver):
    failures = {}
    for page in _reader_pages(book):
        _open(driver, server, page)
        problems = _text_problems(
            driver.execute_script(PAGE_TEXT), driver.execute_script(CODE_TEXTS)
        )
        if problems:
            failures[page] = problems[:8]
    assert not failures, json.dumps(failures, indent=2)
    # the checks themselves can fail: a planted path and a planted en dash are found
    planted = _text_problems("see /work/main/x.py and run x \u2013out y", ["a \u2013out b"])
    assert len(planted) == 3, planted
