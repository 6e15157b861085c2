"""The web chat page in a real headless Chromium: type a message, get a recommendation with its candidates.

Needs Debian's `chromium` and `chromium-driver` (scripts/install.sh installs them when run as root); skips without.
Saves a screenshot to docs/web_chat.png.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_helpers import REPO, build_tiny_run, catalog_titles, serve_in_thread

from reges.recommender import PipelineRecommender
from reges.server import ServerConfig, create_app

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOT = REPO / "docs" / "web_chat.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            f"headless Chromium not found ({CHROMIUM}, {CHROMEDRIVER}); install it with "
            "`apt-get install -y chromium chromium-driver` (scripts/install.sh does this when run as root)"
        )
    profile = tempfile.mkdtemp(prefix="reges-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1000,800",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("web") / "run")  # the real all-MiniLM-L6-v2: sensible picks


def test_web_chat_recommends_with_candidates(browser: object, tiny_run: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser  # a selenium WebDriver
    titles = catalog_titles(tiny_run)
    app = create_app(PipelineRecommender.from_run_dir(tiny_run), ServerConfig(model_name="books-tiny"))
    with serve_in_thread(app) as url:
        driver.get(url)  # type: ignore[attr-defined]
        wait = WebDriverWait(driver, 30)
        wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "books-tiny"))

        box = driver.find_element(By.ID, "message")  # type: ignore[attr-defined]
        box.send_keys("hi")
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant:not(.pending)")) == 2)
        assert not driver.find_elements(By.CSS_SELECTOR, ".rec")  # type: ignore[attr-defined]

        box.send_keys("I want an epic fantasy adventure with a long journey, like Tolkien")
        driver.find_element(By.ID, "send").click()  # type: ignore[attr-defined]
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".rec .candidates li")))
        pick = driver.find_element(By.CSS_SELECTOR, ".rec .pick").text  # type: ignore[attr-defined]
        candidates = driver.find_elements(By.CSS_SELECTOR, ".rec .candidates li")  # type: ignore[attr-defined]
        assert pick in titles.values()
        assert len(candidates) == 5
        assert candidates[0].get_attribute("class") == "picked" and candidates[0].text.startswith(pick)
        assert "retrieve" in driver.find_element(By.CSS_SELECTOR, ".rec .latency").text  # type: ignore[attr-defined]
        assert not driver.find_elements(By.CSS_SELECTOR, ".msg.error")  # type: ignore[attr-defined]

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOT))  # type: ignore[attr-defined]

        # The page sends the dialogue with the earlier pick's id, so a follow-up gets something else.
        box.send_keys("I read that one already, what else?")
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".rec .pick")) == 2)
        picks = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".rec .pick")]  # type: ignore[attr-defined]
        assert picks[1] != picks[0] and picks[1] in titles.values()

        driver.find_element(By.ID, "reset").click()  # type: ignore[attr-defined]
        assert len(driver.find_elements(By.CSS_SELECTOR, ".msg")) == 1  # type: ignore[attr-defined]
    assert SCREENSHOT.stat().st_size > 10_000
