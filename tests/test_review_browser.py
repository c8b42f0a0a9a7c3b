"""The review page in a real headless Chromium (Debian's chromium and chromedriver, driven by
Selenium; `make test-slow` installs them): it shows the quarantine with its pictures, a page
of another origin open in the same browser cannot restore, and the page's own buttons
restore one photo and purge another, which the files and the database then show.

Screenshots go to artifacts/screenshots/ (kept by CI; docs/review.png is one of them)."""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dedupd.store import Store
from tests.reviewing import REPO, Library, make_library, reviewing

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.slow


@pytest.fixture
def browser() -> Iterator[Chrome]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing: `make test-slow` installs them")
        pytest.skip("needs Debian's chromium and chromium-driver (`make test-slow` installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--disable-dev-shm-usage",
        "--no-first-run",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another site on this machine (another port: the same *site* to a browser, so the
    SameSite cookie goes along; only the origin check stands in the way)."""

    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _quarantined(lib: Library) -> dict[str, int]:
    with Store(lib.db, readonly=True) as store:
        return {a.src: a.id for a in store.quarantined()}


def _quarantined_hostile(tmp_path: Path, name: str) -> tuple[Library, Path, dict[str, int]]:
    """`make_library` plus a copy of hubble.jpg named `name`, quarantined by a scan."""
    from click.testing import CliRunner

    from dedupd.cli import dedupd
    from tests import photos

    lib = make_library(tmp_path)
    hostile = lib.photos / name
    photos.copy(photos.photo("hubble"), hostile)
    scanned = CliRunner().invoke(dedupd, ["scan", "--config", str(lib.config), "--workers", "1"])
    assert scanned.exit_code == 0, scanned.output
    ids = _quarantined(lib)
    assert str(hostile) in ids
    return lib, hostile, ids


def test_the_page_restores_one_photo_and_purges_another_in_a_real_browser(
    tmp_path: Path, browser: Chrome
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    lib = make_library(tmp_path)
    wa = str(lib.photos / "chat" / "coffee-wa.jpg")
    copy = str(lib.photos / "astronaut (1).jpg")
    ids = _quarantined(lib)
    with Store(lib.db, readonly=True) as store:
        action = store.action(ids[copy])
        purged_dst = action.dst if action else None
    assert purged_dst and os.path.isfile(purged_dst)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    wait = WebDriverWait(driver, 60)

    with reviewing(lib.config) as review:
        driver.get(review.url)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.item")) == 2)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.group")) == 1)
        # Every picture (two photos, two keepers, the group's two) was served and decoded.
        wait.until(
            lambda d: d.execute_script(
                "const imgs = [...document.images];"
                "return imgs.length === 6 && imgs.every(i => i.complete && i.naturalWidth > 0);"
            )
        )
        driver.save_screenshot(str(SCREENSHOTS / "review.png"))

        # Another origin open in the same browser posts to the page's API: refused.
        _Attacker.page = (
            "<script>const u = '" + review.base + "/api/restore';"
            "const b = JSON.stringify({ids: [" + str(ids[wa]) + "]});"
            "Promise.allSettled(["
            "fetch(u, {method: 'POST', credentials: 'include', mode: 'no-cors', body: b}),"
            "fetch(u, {method: 'POST', credentials: 'include',"
            " headers: {'Content-Type': 'application/json'}, body: b})"
            "]).then(() => { document.title = 'sent'; });</script>"
        ).encode()
        attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
        thread = threading.Thread(target=attacker.serve_forever)
        thread.start()
        try:
            driver.get(f"http://127.0.0.1:{attacker.server_address[1]}/")
            wait.until(ec.title_is("sent"))
        finally:
            attacker.shutdown()
            attacker.server_close()
            thread.join()
        assert _quarantined(lib) == ids, "a page of another origin restored a photo"

        driver.get(review.base + "/")  # the cookie suffices
        item = f"article.item[data-action-id='{ids[wa]}']"
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"{item} button.restore"))).click()
        wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, item)))
        assert os.path.isfile(wa)
        assert wa not in _quarantined(lib)

        item = f"article.item[data-action-id='{ids[copy]}']"
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"{item} button.purge"))).click()
        wait.until(ec.alert_is_present())
        driver.switch_to.alert.accept()  # "Delete ... for good?"
        wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, item)))
        assert not os.path.exists(purged_dst)
        assert _quarantined(lib) == {}
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "1 purged"))
        driver.save_screenshot(str(SCREENSHOTS / "review-after.png"))

        # Without the cookie, the browser gets nothing.
        driver.delete_all_cookies()
        driver.get(review.base + "/api/quarantine")
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "no token" in body and "coffee" not in body

    with Store(lib.db, readonly=True) as store:
        kinds = [(a.kind, a.state) for a in store.actions("kind IN ('restore', 'purge')")]
    assert sorted(kinds) == [("purge", "done"), ("restore", "done")]
    assert os.path.isfile(lib.photos / "astronaut.jpg"), "the keeper is untouched"


def test_the_page_shows_a_file_names_controls_and_overrides_escaped(
    tmp_path: Path, browser: Chrome
) -> None:
    """A quarantined copy whose name holds a newline and a right-to-left override: the page
    shows them as escapes (never a name reordered to pass for another), and its Restore
    button still restores that very file (the name sent back is the stored one)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # and a zero-width space, a line separator: invisible, or a line break, on the page
    lib, hostile, ids = _quarantined_hostile(
        tmp_path, "hubble\nquarantined\u202egpj\u200b\u2028.jpg"
    )
    wait = WebDriverWait(browser, 60)
    with reviewing(lib.config) as review:
        browser.get(review.url)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.item")) == 3)
        item = f"article.item[data-action-id='{ids[str(hostile)]}']"
        path = browser.find_element(By.CSS_SELECTOR, f"{item} figcaption .path").text
        assert path == f"{lib.photos}/hubble\\nquarantined\\u202egpj\\u200b\\u2028.jpg"
        page = browser.execute_script("return document.body.textContent")
        assert not {"\u202e", "\u200b", "\u2028"} & set(page) and "hubble\n" not in page
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"{item} button.restore"))).click()
        wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, item)))
    assert hostile.is_file()


def test_the_page_shows_a_refusal_naming_a_hostile_file_escaped(
    tmp_path: Path, browser: Chrome
) -> None:
    """A restore refused because a file now holds the original name: the status line says
    so naming that file, with its controls and right-to-left override escaped as in the
    list (the server's message is shown as text the name cannot reorder)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    lib, hostile, ids = _quarantined_hostile(tmp_path, "hubble\nquarantined\u202egpj.jpg")
    hostile.write_bytes(b"another file now holds the name")
    wait = WebDriverWait(browser, 60)
    with reviewing(lib.config) as review:
        browser.get(review.url)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.item")) == 3)
        item = f"article.item[data-action-id='{ids[str(hostile)]}']"
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"{item} button.restore"))).click()
        wait.until(lambda d: "exists" in d.find_element(By.ID, "status").text)
        status = browser.execute_script("return document.getElementById('status').textContent")
    assert "\u202e" not in status and "hubble\n" not in status
    assert f"{lib.photos}/hubble\\nquarantined\\u202egpj.jpg exists" in status


def test_a_member_matched_through_another_is_shown_and_marked_distinct_against_that_one(
    tmp_path: Path, browser: Chrome
) -> None:
    """A crop of a near copy, not matched with the group's keeper (`via`): the page says
    which photo it is a crop of, and its Mark distinct marks it distinct from that photo,
    which takes it out of the group (marked against the keeper, it stayed listed: the
    button seemed to do nothing)."""
    from click.testing import CliRunner
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from dedupd import queries
    from dedupd.cli import dedupd
    from dedupd.config import load_config
    from dedupd.features import FEATURES_KEY
    from tests import photos

    lib = make_library(tmp_path)
    crop = lib.shared / "rocket-crop.jpg"
    photos.copy(photos.photo("rocket"), crop)
    scanned = CliRunner().invoke(dedupd, ["scan", "--config", str(lib.config), "--workers", "1"])
    assert scanned.exit_code == 0, scanned.output
    with Store(lib.db) as store:
        found = queries.groups(store, load_config(lib.config))["groups"]
        shared = [g for g in found if g["keeper"]["path"].startswith(str(lib.shared))]
        ((copy),) = shared[0]["duplicates"]  # of the chelsea photo and its turned copy
        via = Path(copy["path"])
        crop_record, via_record = store.file_at(crop), store.file_at(via)
        assert crop_record is not None and via_record is not None
        detail = {"crop": crop_record.id, "kept": 0.6, "inliers": 80}
        store.replace_matches(
            crop_record.id, FEATURES_KEY, [(via_record.id, 40, "crop", "identity", detail)]
        )
        store.commit()
    wait = WebDriverWait(browser, 60)
    figure = f"figure:has(img[src='/img/file/{crop_record.id}'])"
    with reviewing(lib.config) as review:
        browser.get(review.url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"article.group {figure}"))
        why = browser.find_element(By.CSS_SELECTOR, f"{figure} .why").text
        assert f"of {via}" in why
        wait.until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, f"{figure} button.distinct"))
        ).click()
        wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, figure)))
    with Store(lib.db, readonly=True) as store:
        pairs = set(store.db.execute("SELECT sha_a, sha_b FROM distinct_pairs").fetchall())
    assert pairs == {tuple(sorted((str(crop_record.sha256), str(via_record.sha256))))}
