"""The dashboard in a real browser: Debian's chromium (headless) driven by Selenium through
Debian's chromedriver, against a live `serve` on 127.0.0.1 and a labelled compose app on the
real Docker engine. Log in (a wrong key refused), see the app, back it up, watch the job
finish, see the backup in the table and the chart, restore it after typing the app id, verify
the repository, check the layout at 360 px, log out; a POST without the CSRF token is
refused. Screenshots go to $W9_SCREENSHOTS (docs/screenshots/ when refreshing the README's)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import run_cli
from tests.integration.conftest import ComposeProject, service
from tests.serve_helpers import SERVE_KEY, Served

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        message = "chromium and chromium-driver are not installed (scripts/test-env browser)"
        pytest.fail(message) if CI else pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _exec(container: str, command: str) -> str:
    out = subprocess.run(["docker", "exec", container, "sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _until(driver: WebDriver, what: str, condition, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """A click starts a navigation that may not have finished when it returns: wait for its page."""
    WebDriverWait(driver, timeout).until(lambda d: condition(), message=what)


def _wait_job(driver: WebDriver, timeout: float = 180) -> str:
    """On a job's page: wait until its script shows a final status; returns it."""
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, "job-status").text.strip() in ("OK", "FAILED", "INTERRUPTED")
    )
    return driver.find_element(By.ID, "job-status").text.strip()


def test_the_dashboard_end_to_end(browser: WebDriver, compose, tmp_path: Path) -> None:
    shots = Path(os.environ.get("W9_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    compose.write(
        {"web": service(labels={"websoft9.backup.schedule": "0 3 * * *", "websoft9.backup.retention": "last=10",
                                "websoft9.backup.type": "incremental"},
                        volumes=["site:/srv/site"])},
        volumes=["site"],
    )  # fmt: skip
    compose.up()
    web = compose.container("web")
    _exec(web, "echo 'version one' > /srv/site/index.html && mkdir -p /srv/site/uploads")
    _exec(web, "head -c 300000 /dev/urandom > /srv/site/uploads/photo.jpg")
    (tmp_path / "broken").mkdir()
    broken = ComposeProject(tmp_path / "broken", compose.name + "b")  # an app whose label is wrong
    broken.write({"web": service(labels={"websoft9.backup.schedule": "sometimes"})})
    broken.up()
    repo = tmp_path / "repo"
    assert run_cli("init", "--repo", repo, env={"BACKUP_DATA_DIR": str(tmp_path / "data")}).code == 0
    served = Served(tmp_path, repo, env={"BACKUP_PRUNE_SCHEDULE": "off"})
    app_id = compose.name
    d = browser
    try:
        served.wait_ready()
        base = served.base

        # log in: a wrong key is refused, the right one lands on the apps page
        d.get(base + "/")
        assert "/login" in d.current_url and "Log in" in d.title
        d.find_element(By.ID, "api_key").send_keys("not-the-key")
        d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        _until(d, "the wrong key refused", lambda: "that API key is wrong" in d.page_source)
        d.save_screenshot(str(shots / "login.png"))
        d.find_element(By.ID, "api_key").send_keys(SERVE_KEY)
        d.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
        _until(d, "the apps page", lambda: d.current_url.rstrip("/") == base and "Apps" in d.title)
        row = d.find_element(By.XPATH, f"//tr[.//div[@class='sub' and text()='{app_id}']]")
        assert "0 3 * * *" in row.text and "last=10" in row.text and "never" in row.text
        wrong = d.find_element(By.XPATH, f"//tr[.//div[@class='sub' and text()='{broken.name}']]")
        error = wrong.find_element(By.CLASS_NAME, "label-error")
        assert "websoft9.backup.schedule=sometimes" in error.text and "Label error" in error.text
        assert not wrong.find_element(By.XPATH, ".//button[text()='Back up now']").is_enabled()
        d.save_screenshot(str(shots / "apps.png"))

        # a POST without the CSRF token is refused, even with the session cookie
        cookie = d.get_cookie("w9_session")
        assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        request = urllib.request.Request(f"{base}/apps/{app_id}/backup", data=b"", method="POST",
                                         headers={"Cookie": f"w9_session={cookie['value']}"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 400

        # back up now, watch the job finish
        row.find_element(By.XPATH, ".//button[text()='Back up now']").click()
        _until(d, "the backup's job page", lambda: "/jobs/job_" in d.current_url)
        assert _wait_job(d) == "OK", d.find_element(By.ID, "job-error").text
        d.save_screenshot(str(shots / "job.png"))

        # the backup is in the app's table and chart
        d.get(f"{base}/apps/{app_id}")
        rows = d.find_elements(By.CSS_SELECTOR, "main table tbody tr")
        assert len(rows) == 1 and "OK" in rows[0].text and "full" in rows[0].text  # the first: nothing to build on
        assert len(d.find_elements(By.CSS_SELECTOR, "svg.chart circle.stored")) == 1
        d.save_screenshot(str(shots / "app.png"))

        # the app changes; restore the backup after typing the app id
        _exec(web, "echo 'version two' > /srv/site/index.html && rm /srv/site/uploads/photo.jpg")
        rows[0].find_element(By.LINK_TEXT, "Restore…").click()
        _until(d, "the restore page", lambda: "/restore/" in d.current_url)
        page = d.page_source
        assert "volume <code>site</code>" in page and "safety snapshot" in page
        d.save_screenshot(str(shots / "restore.png"))
        d.find_element(By.ID, "confirm").send_keys(app_id + "x")
        d.find_element(By.CSS_SELECTOR, "button.danger").click()
        _until(d, "the wrong confirmation refused", lambda: "type the app id" in d.page_source)
        assert _exec(web, "cat /srv/site/index.html") == "version two\n"
        d.find_element(By.ID, "confirm").send_keys(app_id)
        d.find_element(By.CSS_SELECTOR, "button.danger").click()
        _until(d, "the restore's job page", lambda: "/jobs/job_" in d.current_url)
        assert _wait_job(d) == "OK", d.find_element(By.ID, "job-error").text
        assert _exec(web, "cat /srv/site/index.html; ls /srv/site/uploads") == "version one\nphoto.jpg\n"

        # the jobs page lists both, live
        d.get(f"{base}/jobs")
        WebDriverWait(d, 10).until(lambda drv: "Updated" in drv.find_element(By.ID, "updated").text)
        kinds = [r.find_elements(By.TAG_NAME, "td")[1].text for r in d.find_elements(By.CSS_SELECTOR, "#jobs tr")]
        assert "backup" in kinds and "restore" in kinds, kinds
        d.save_screenshot(str(shots / "jobs.png"))

        # the repository: verify it
        d.get(f"{base}/repository")
        assert "2 completed" in d.page_source  # the backup and the restore's safety snapshot
        d.find_element(By.XPATH, "//button[text()='Verify']").click()
        _until(d, "the check's job page", lambda: "/jobs/job_" in d.current_url)
        assert _wait_job(d) == "OK", d.find_element(By.ID, "job-error").text
        d.get(f"{base}/repository")
        assert "no errors" in d.page_source
        d.save_screenshot(str(shots / "repository.png"))

        # 360 px wide: nothing wider than the screen
        d.set_window_size(360, 800)
        d.get(base + "/")
        width = d.execute_script("return document.documentElement.scrollWidth")
        assert width <= 360 + 1, f"the apps page is {width} px wide at 360 px"
        d.save_screenshot(str(shots / "apps-mobile.png"))
        d.set_window_size(1280, 900)

        # log out
        d.get(base + "/")
        d.find_element(By.XPATH, "//button[text()='Log out']").click()
        _until(d, "the login page", lambda: "/login" in d.current_url)
        d.get(f"{base}/jobs")
        assert "/login" in d.current_url
    finally:
        served.stop(signal.SIGTERM)
        served.stop(signal.SIGKILL)
        broken.down()
