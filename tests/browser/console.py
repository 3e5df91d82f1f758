"""Drives heartsink's status page in headless Chromium (Selenium WebDriver) and prints, as one
JSON line on stdout, what each view shows; tests/console_browser.rs starts the daemon and the
fleet, runs this, and compares what the page showed with the API. A screenshot of each view
goes to SCREENSHOTS.

Environment: HEARTSINK_URL (the admin base URL), HEARTSINK_READ_TOKEN, HEARTSINK_ADMIN_TOKEN,
HEARTSINK_CHROMIUM, HEARTSINK_CHROMEDRIVER, HEARTSINK_SCREENSHOTS. Every wait is bounded; the
browser and its driver are quit on every path.
"""

import json
import os
import sys
import time
import traceback

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

URL = os.environ["HEARTSINK_URL"].rstrip("/")
READ = os.environ["HEARTSINK_READ_TOKEN"]
ADMIN = os.environ["HEARTSINK_ADMIN_TOKEN"]
SHOTS = os.environ["HEARTSINK_SCREENSHOTS"]
WAIT_S = 20


def wait(driver, what, script):
    deadline = time.monotonic() + WAIT_S
    while True:
        v = driver.execute_script(script)
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def dialog(driver, accept, keys=None):
    """Answers the page's next confirm() or prompt(): its text."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            alert = driver.switch_to.alert
            text = alert.text
            break
        except NoAlertPresentException:
            if time.monotonic() > deadline:
                raise TimeoutError("no confirmation was asked")
            time.sleep(0.05)
    if keys is not None:
        alert.send_keys(keys)
    if accept:
        alert.accept()
    else:
        alert.dismiss()
    return text


def refreshes(driver):
    return int(driver.execute_script("return Number(document.body.dataset.refreshes || 0)"))


def settle(driver, view, after=None):
    """Waits until `view` is shown and loaded (and, with `after`, refreshed twice more)."""
    wait(driver, f"view {view}", f"return document.body.dataset.view === '{view}' && document.body.dataset.loaded === '1'")
    if after is not None:
        wait(driver, f"view {view} refreshed", f"return Number(document.body.dataset.refreshes || 0) >= {after + 2}")


def go(driver, hash_, view):
    n = refreshes(driver)
    driver.execute_script(f"location.hash = '{hash_}'")
    settle(driver, view, n)


def shot(driver, name):
    os.makedirs(SHOTS, exist_ok=True)
    driver.save_screenshot(os.path.join(SHOTS, name))


def number(driver, css):
    t = driver.find_element(By.CSS_SELECTOR, css).text
    return int(t.replace(",", "")) if t.replace(",", "").isdigit() else t


def sign_in(driver, token):
    wait(driver, "the token form", "return document.body.dataset.auth === 'needed'")
    driver.find_element(By.ID, "login-token").send_keys(token)
    driver.find_element(By.ID, "login-go").click()
    wait(driver, "signed in", "return document.body.dataset.auth === 'ok'")


def main():
    opts = Options()
    opts.binary_location = os.environ["HEARTSINK_CHROMIUM"]
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100",
              "--no-first-run", "--disable-extensions", "--disable-background-networking"]:
        opts.add_argument(a)
    service = Service(executable_path=os.environ["HEARTSINK_CHROMEDRIVER"])
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    out = {}
    try:
        driver.get(URL + "/")
        wait(driver, "the token form", "return document.body.dataset.auth === 'needed'")
        out["asked_for_token"] = driver.find_element(By.ID, "login").is_displayed()
        shot(driver, "token.png")

        # A read token: the overview.
        sign_in(driver, READ)
        settle(driver, "overview", refreshes(driver))
        out["role_shown"] = driver.find_element(By.ID, "who-role").text
        ov = {
            "tracked": number(driver, "#ov-tracked .v"),
            "unhealthy": number(driver, "#ov-unhealthy .v"),
            "alive": number(driver, "#ov-alive .v"),
            "stale": number(driver, "#ov-stale .v"),
            "by_status": {
                tr.get_attribute("data-status"): int(tr.find_elements(By.TAG_NAME, "td")[1].text.replace(",", ""))
                for tr in driver.find_elements(By.CSS_SELECTOR, "#ov-status tr[data-status]")
            },
            "charts": {
                c: int(driver.find_element(By.ID, c).get_attribute("data-points") or 0)
                for c in ["chart-ingest", "chart-drops", "chart-p99"]
            },
            "polylines": len(driver.find_elements(By.CSS_SELECTOR, "#chart-ingest polyline")),
            "keys": [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#ov-keys li")],
        }
        out["overview"] = ov
        shot(driver, "overview.png")
        # Live: the view refreshes itself, without reloading the page (the marker survives).
        driver.execute_script("window.heartsinkMarker = 'kept'")
        n = refreshes(driver)
        time.sleep(5)
        out["refreshes_in_5_s"] = refreshes(driver) - n

        # The list, unhealthy first, then filtered to the stale ones.
        go(driver, "#/amphorae", "amphorae")
        out["list"] = [tr.get_attribute("data-id") for tr in driver.find_elements(By.CSS_SELECTOR, "#am-table tr[data-id]")]
        out["list_liveness"] = [
            tr.get_attribute("data-liveness") for tr in driver.find_elements(By.CSS_SELECTOR, "#am-table tr[data-id]")
        ]
        shot(driver, "amphorae.png")
        driver.find_element(By.CSS_SELECTOR, "#f-liveness option[value='']").click()
        driver.find_element(By.XPATH, "//select[@id='f-liveness']/option[text()='stale']").click()
        n = refreshes(driver)
        driver.find_element(By.ID, "f-apply").click()
        settle(driver, "amphorae", n)
        out["stale_filter"] = [
            tr.get_attribute("data-id") for tr in driver.find_elements(By.CSS_SELECTOR, "#am-table tr[data-id]")
        ]
        shot(driver, "amphorae-stale.png")

        # The detail view of the first stale one, through its link.
        first = out["stale_filter"][0] if out["stale_filter"] else out["list"][0]
        n = refreshes(driver)
        driver.find_element(By.CSS_SELECTOR, f"#am-table tr[data-id='{first}'] a").click()
        settle(driver, "amphora", n)
        out["detail"] = {
            "id": driver.find_element(By.ID, "ad-title").text,
            "listeners": [
                tr.get_attribute("data-listener") for tr in driver.find_elements(By.CSS_SELECTOR, "#ad-listeners tr[data-listener]")
            ],
            "members": len(driver.find_elements(By.CSS_SELECTOR, "#ad-pools tr[data-member]")),
            "transitions": len(driver.find_elements(By.CSS_SELECTOR, "#ad-transitions td")),
            "summary": driver.find_element(By.ID, "ad-summary").text,
        }
        out["read_admin_actions"] = len(driver.find_elements(By.CSS_SELECTOR, ".admin-action"))
        shot(driver, "amphora.png")

        for view in ["failovers", "services", "volumes", "cluster"]:
            go(driver, f"#/{view}", view)
            out.setdefault("views", {})[view] = driver.find_element(By.ID, f"view-{view}").text[:2000]
            if view != "cluster":
                out.setdefault("read_actions_" + view, len(driver.find_elements(By.CSS_SELECTOR, ".admin-action")))
            shot(driver, f"{view}.png")

        out["never_reloaded"] = driver.execute_script("return window.heartsinkMarker === 'kept'")

        # An admin token: the same detail view offers the actions.
        driver.find_element(By.ID, "signout").click()
        sign_in(driver, ADMIN)
        go(driver, f"#/amphora/{first}", "amphora")
        out["admin_role_shown"] = driver.find_element(By.ID, "who-role").text
        out["admin_actions"] = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#view-amphora .admin-action")]
        shot(driver, "amphora-admin.png")
        # Forget, then think better of it: nothing happens. Fail over, confirmed: it starts.
        driver.find_element(By.ID, "act-forget").click()
        out["forget_question"] = dialog(driver, accept=False)
        n = refreshes(driver)
        driver.find_element(By.ID, "act-failover").click()
        out["failover_question"] = dialog(driver, accept=True)
        settle(driver, "amphora", n)
        out["failed_over"] = first
        go(driver, "#/services", "services")
        out["admin_actions_services"] = len(driver.find_elements(By.CSS_SELECTOR, "#view-services .admin-action"))
        shot(driver, "services-admin.png")
        # Lock the first service's score at 42: the score asked for, then the confirmation.
        n = refreshes(driver)
        driver.find_element(By.CSS_SELECTOR, "#view-services tr[data-service] .admin-action").click()
        out["lock_prompt"] = dialog(driver, accept=True, keys="42")
        out["lock_question"] = dialog(driver, accept=True)
        settle(driver, "services", n)
        out["locked_row"] = driver.find_element(By.CSS_SELECTOR, "#view-services tr[data-service]").text
        out["console_errors"] = [
            e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE" and "401" not in e["message"]
        ]
    finally:
        driver.quit()
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the test prints stderr on failure
        print(f"console.py: {type(e).__name__}: {e}", file=sys.stderr)
        traceback.print_exc(limit=3)
        sys.exit(1)
