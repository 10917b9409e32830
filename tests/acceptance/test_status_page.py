"""GET /status in headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
selenium through the given driver path: no browser download, Selenium Manager never runs),
with real server and client processes and jobs running while the page is open; and who may
see it when API_TOKENS_FILE is set (ADMIN_USERS).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from testkit import unavailable
from testkit.harness import Api, Cluster, cluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
SLEEP = "sleep 60\n"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            unavailable(f"{path} is missing (Debian packages chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root, where chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    with pytest.MonkeyPatch.context() as patch:
        # Any attempt to fetch a driver or a browser would go through Selenium Manager: make
        # it fail loudly instead of downloading.
        patch.setenv("SE_MANAGER_PATH", "/nonexistent/selenium-manager")
        patch.setenv("NO_PROXY", "127.0.0.1")
        try:
            driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        except WebDriverException as error:
            unavailable(f"chromium does not start here: {error.msg}")
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {"SERVICE_EXAMPLE_RUNS_PER_USER": "1", "SERVICE_EXAMPLE_MAX_RUNS": "4"}
    with cluster(tmp_path_factory.mktemp("status-page"), server_env=env) as running:
        yield running


def job_statuses(driver: WebDriver) -> dict[int, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "table#jobs tr[data-job-id]")
    return {
        int(row.get_attribute("data-job-id") or 0): row.find_element(
            By.CSS_SELECTOR, "td.status"
        ).text
        for row in rows
    }


def test_status_page_shows_running_jobs_and_filters_them(
    busy: Cluster, browser: WebDriver, tmp_path: Path
) -> None:
    api = busy.api
    done = api.submit("echo done > out.txt\n", user_id=3)
    failed = api.submit("exit 4\n", user_id=3)
    for job_id in (done, failed):
        api.wait_for(job_id, *FINAL)
    running = api.submit(SLEEP, user_id=1)
    waiting = api.submit(SLEEP, user_id=1)  # RUNS_PER_USER=1: stays Queued
    other = api.submit(SLEEP, user_id=2)
    try:
        for job_id in (running, other):
            api.wait_for(job_id, "Running")
        assert busy.server is not None
        browser.get(f"{busy.server.url}/status")

        assert browser.title == "job-orchestrator status"
        shown = job_statuses(browser)
        assert {
            job_id: shown.get(job_id) for job_id in (done, failed, running, waiting, other)
        } == {
            done: "Completed",
            failed: "Failed",
            running: "Running",
            waiting: "Queued",
            other: "Running",
        }
        assert list(shown) == sorted(shown, reverse=True)  # newest first

        service = browser.find_element(By.CSS_SELECTOR, 'table#services tr[data-service="example"]')
        assert service.find_element(By.CSS_SELECTOR, ".runs-per-user").text == "1"
        assert service.find_element(By.CSS_SELECTOR, ".max-runs").text == "4"
        assert service.find_element(By.CSS_SELECTOR, ".queued").text == "1"
        assert service.find_element(By.CSS_SELECTOR, ".active").text == "2"
        users = {
            element.get_attribute("data-user-id"): element.text
            for element in service.find_elements(By.CSS_SELECTOR, ".user")
        }
        assert users == {"1": "user 1: 1 / 1", "2": "user 2: 0 / 1"}

        client = browser.find_element(
            By.CSS_SELECTOR, f'table#clients tr[data-client="{busy.clients[0].url}"]'
        )
        assert client.find_element(By.CSS_SELECTOR, ".health").text == "up"

        Select(browser.find_element(By.NAME, "status")).select_by_visible_text("Running")
        browser.find_element(By.ID, "apply").click()
        # The click only starts the navigation; under load the old page is still shown.
        WebDriverWait(browser, 30).until(lambda page: "status=Running" in page.current_url)
        assert browser.current_url.endswith("status?service=&status=Running&user_id=")
        assert job_statuses(browser) == {other: "Running", running: "Running"}
        # The form keeps the chosen filter.
        assert (
            Select(browser.find_element(By.NAME, "status")).first_selected_option.text == "Running"
        )

        screenshot = tmp_path / "status.png"
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        browser.get(f"{busy.server.url}/status?status=Failed&service=example")
        assert job_statuses(browser) == {failed: "Failed"}
        browser.get(f"{busy.server.url}/status?status=Cleaned")
        assert job_statuses(browser) == {}
        assert browser.find_element(By.ID, "no-jobs").text == "no jobs match"
    finally:
        for job_id in (running, waiting, other):
            httpx.post(f"{api.base_url}/terminate/{job_id}", timeout=30)


def test_status_page_pages_older_jobs(busy: Cluster, browser: WebDriver) -> None:
    api = busy.api
    jobs = [api.submit("true\n", user_id=5) for _ in range(3)]
    for job_id in jobs:
        api.wait_for(job_id, *FINAL)
    assert busy.server is not None
    browser.get(f"{busy.server.url}/status?user_id=5&limit=2")
    assert list(job_statuses(browser)) == [jobs[2], jobs[1]]
    browser.find_element(By.ID, "older").click()
    WebDriverWait(browser, 30).until(lambda page: "cursor=" in page.current_url)
    assert list(job_statuses(browser)) == [jobs[0]]
    assert not browser.find_elements(By.ID, "older")


@pytest.mark.parametrize("query", ["status=running", "limit=0", "cursor=x", "user_id=y"])
def test_bad_filters_get_400(busy: Cluster, query: str) -> None:
    assert busy.server is not None
    response = httpx.get(f"{busy.server.url}/status?{query}", timeout=30)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert query.split("=")[0] in response.text


def test_status_page_is_not_in_the_openapi_document(busy: Cluster) -> None:
    assert busy.server is not None
    spec = httpx.get(f"{busy.server.url}/api-docs/openapi.json", timeout=30).json()
    assert "/status" not in spec["paths"]


ADMIN, USER = f"admin-{secrets.token_hex(16)}", f"user-{secrets.token_hex(16)}"


def test_with_tokens_only_admin_users_see_it(tmp_path: Path, browser: WebDriver) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{ADMIN} 100\n{USER} 7\n")
    env = {"API_TOKENS_FILE": str(tokens), "ADMIN_USERS": "100, 101"}
    with cluster(tmp_path, server_env=env) as running:
        assert running.server is not None
        url = f"{running.server.url}/status"
        job_id = Api(running.server.url, token=USER).submit("true\n", user_id=None)

        anonymous = httpx.get(url, timeout=30)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith('Basic realm="job-orchestrator')
        for authorization in (f"Bearer {USER}", f"Bearer {ADMIN}x", "Basic !!", f"Basic {USER}"):
            refused = httpx.get(url, headers={"Authorization": authorization}, timeout=30)
            assert refused.status_code in (401, 403), authorization
        user = httpx.get(url, headers={"Authorization": f"Bearer {USER}"}, timeout=30)
        assert user.status_code == 403
        assert "ADMIN_USERS" in user.text

        admin = httpx.get(url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        assert admin.status_code == 200
        assert f'data-job-id="{job_id}"' in admin.text
        basic = base64.b64encode(f"anyone:{ADMIN}".encode()).decode()
        assert (
            httpx.get(url, headers={"Authorization": f"Basic {basic}"}, timeout=30).status_code
            == 200
        )

        # A browser answers the Basic challenge with what its user types; here the header
        # is set through the DevTools protocol, and the page renders for the admin.
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {basic}"}}
        )
        try:
            browser.get(url)
            assert job_id in job_statuses(browser)
        finally:
            browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
