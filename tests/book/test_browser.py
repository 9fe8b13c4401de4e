"""Open every page of the built book in a real (headless) Chromium.

Checks, page by page, over a local HTTP server on 127.0.0.1:
  * no broken image (naturalWidth > 0);
  * no SEVERE console message, no HTTP response >= 400;
  * no request to any host other than 127.0.0.1 / localhost (CDP network
    events from ChromeDriver's performance log);
  * pages with math get it typeset by the vendored MathJax (mjx-container);
  * every <figure> has a numbered caption "Fig. N".
Then: the built-in search finds the results page for "accuracy"; one page
opened through file:// typesets its math; a screenshot of the results page
goes to <BOOK_HTML>/../screenshots/results.png (_build/screenshots/ by default).

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


def test_screenshot_results(book, server, driver):
    shots = book.parent / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    driver.get(f"{server}/results.html")
    _wait(driver, MATH_DONE.replace("> 0", ">= 0"), 5)
    target = shots / "results.png"
    assert driver.save_screenshot(str(target)), "screenshot failed"
    assert target.stat().st_size > 10_000
