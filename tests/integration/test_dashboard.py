"""The web dashboard in a REAL headless Chromium (Debian's chromium + chromium-driver, driven
by selenium; nothing downloads a browser), against a real llama-server: the page loads and
lists the models, a click on switch shows the load progress and then the new active model, a
request made with plain HTTP appears in the activity table, the log view follows, a 409 busy
answer is shown. And the browser rules: a page from another origin (a second local port,
under a name that is not loopback) cannot switch or stop, while one from an origin in
daemon.allowed_origins can."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from harness import ROOT, Home, Ports, wait_for
from tinymodel import write_tiny_llama

pytestmark = pytest.mark.real_backend

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# names a real page could have; the browser resolves them to this machine
FOREIGN, ALLOWED = "evil.example", "ui.example"


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            pytest.fail(f"{path} is missing; tests/run.sh installs chromium and chromium-driver")
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must never fetch a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,1000",
                 f"--host-resolver-rules=MAP {FOREIGN} 127.0.0.1, MAP {ALLOWED} 127.0.0.1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(
        CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def dash_home(real_home: Home, slow_gguf: Path, tmp_path: Path) -> Home:
    real_home.add_model("slow", slow_gguf)  # loads for a second or two: progress to watch
    real_home.add_model("long", write_tiny_llama(tmp_path / "long.gguf", name="long", ctx=8192),
                        llama={"ctx_size": 8192})
    return real_home


def text(driver: Any, css: str) -> str:
    """The text of what matches `css`. The page re-renders its tables every second, so an
    element found may be replaced before its text is read: then it is looked up again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(10):
        try:
            return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{css}: replaced on every one of 10 reads")


def until(driver: Any, condition: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    try:
        return wait_for(condition, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- page text ---\n{text(driver, 'body')}") from None


def click_switch(driver: Any, model: str) -> None:
    """Click the model's switch button once it is there and enabled (the table is redrawn
    whenever the models or the active one change, so look it up afresh each time)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    def clicked() -> bool:
        try:
            button = driver.find_element(By.CSS_SELECTOR,
                                         f'#models tr[data-model="{model}"] button')
            if not button.is_enabled():
                return False
            button.click()
            return True
        except WebDriverException:  # not drawn yet, or redrawn under us
            return False

    until(driver, clicked, f"the switch button of {model}")


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 12}


def test_the_dashboard_shows_and_drives_the_daemon(dash_home: Home, make_daemon,
                                                   browser: Any, tmp_path: Path) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    browser.get(daemon.url + "/")
    assert browser.title == "llmctl"
    until(browser, lambda: text(browser, "#active-model") == "tiny-alpha", "the active model")
    models = until(browser, lambda: text(browser, "#models tbody"), "the model list")
    for model in ("tiny-alpha", "tiny-beta", "slow", "long"):
        assert model in models
    # what the loaded model needs in memory (estimated before its load), in its own column
    memory = daemon.get("/models/tiny-alpha").json()["memory"]
    assert memory["state"] == "known" and memory["host_mib"] > 0
    assert text(browser, '#models tr[data-model="tiny-alpha"] td:nth-child(3)') == \
        f"{memory['host_mib']:.1f} MiB"
    until(browser, lambda: "listening" in text(browser, "#log") or
          "model loaded" in text(browser, "#log"), "the model's log")

    # a switch shows its progress live, then the new model
    click_switch(browser, "slow")
    until(browser, lambda: "progress:" in text(browser, "#switch-events"), "load progress")
    until(browser, lambda: "ready: slow" in text(browser, "#switch-events"), "the switch")
    until(browser, lambda: text(browser, "#active-model") == "slow", "the new active model")
    assert "starting: slow" in text(browser, "#switch-events")
    assert daemon.backend()["model"] == "slow"
    until(browser, lambda: text(browser, "#log-model") == "· slow", "the log of the new model")

    # requests made elsewhere appear in the activity table, with their tokens
    for _ in range(3):
        assert requests.post(daemon.url + "/v1/chat/completions", json=CHAT,
                             timeout=60).status_code == 200
    rows = until(browser, lambda: len([r for r in text(browser, "#activity tbody").splitlines()
                                       if "/v1/chat/completions" in r]) >= 3 and
                 text(browser, "#activity tbody"), "three requests in the activity table")
    assert "slow" in rows and "→ 12" in rows
    assert text(browser, "#rpm") == "3"
    before = len(text(browser, "#log"))
    assert requests.post(daemon.url + "/v1/chat/completions", json=CHAT,
                         timeout=60).status_code == 200
    until(browser, lambda: len(text(browser, "#log")) > before, "the log view to follow")

    # a switch refused as busy is shown, with the way out
    click_switch(browser, "long")
    until(browser, lambda: text(browser, "#active-model") == "long", "the long model")
    # a stream the test does not read: with 20 log-probabilities per token its ~14 MB outgrow
    # the socket buffers, so it stays in flight until the test closes it, however fast the
    # tiny model generates (CI once saw a 7000-token stream end before the click)
    with requests.post(daemon.url + "/v1/chat/completions", stream=True, timeout=60,
                       json={**CHAT, "max_tokens": 7000, "stream": True, "ignore_eos": True,
                             "logprobs": True, "top_logprobs": 20}):
        until(browser, lambda: text(browser, "#in-flight") == "1", "the request in flight")
        click_switch(browser, "tiny-beta")
        message = until(browser, lambda: text(browser, "#message-text"), "the busy message")
        assert "409 busy" in message and "in flight" in message
        assert daemon.backend()["model"] == "long"
    until(browser, lambda: text(browser, "#in-flight") == "0", "the stream to end")
    _screenshot(browser, tmp_path)


def _screenshot(browser: Any, tmp_path: Path) -> None:
    """A picture of the page as the test left it; docs/dashboard.png is made this way, with
    LLMCTL_DASHBOARD_SCREENSHOT=docs/dashboard.png (a test run leaves the checkout alone)."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "message-close").click()
    target = os.environ.get("LLMCTL_DASHBOARD_SCREENSHOT")
    assert browser.save_screenshot(str(ROOT / target if target else tmp_path / "dash.png"))


EVIL_PAGE = """<!doctype html><title>another site</title>
<p id="fetch">trying</p>
<form id="switch" method="post" action="{daemon}/switch/tiny-beta"></form>
<form id="stop" method="post" action="{daemon}/stop"></form>
<script>
const results = [];
async function attempt(name, url, init) {{
  try {{
    const r = await fetch(url, init);
    results.push(name + ":" + r.status + ":" + (await r.text()));
  }} catch (e) {{
    results.push(name + ":blocked");
  }}
  document.getElementById("fetch").textContent = results.join(" | ");
}}
(async () => {{
  await attempt("switch", "{daemon}/switch/tiny-beta", {{method: "POST"}});
  await attempt("stop", "{daemon}/stop", {{method: "POST"}});
  await attempt("activity", "{daemon}/activity", {{}});
  document.title = "done";
}})();
</script>"""


@pytest.fixture
def page_server(tmp_path: Path, ports: Ports) -> Iterator[Callable[[str, str], str]]:
    """A tiny static web server on a second local port; page(name, html) -> its path."""
    root = tmp_path / "site"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", ports.take()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def page(name: str, html: str) -> str:
        (root / name).write_text(html)
        return f":{server.server_address[1]}/{name}"

    try:
        yield page
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_from_another_origin_cannot_switch_or_stop(dash_home: Home, make_daemon,
                                                          browser: Any, page_server) -> None:
    from selenium.webdriver.common.by import By

    daemon = make_daemon()
    path = page_server("evil.html", EVIL_PAGE.format(daemon=daemon.url))
    assert daemon.switch("tiny-alpha").status_code == 200
    browser.get(f"http://{FOREIGN}{path}")
    until(browser, lambda: browser.title == "done", "the foreign page's attempts")
    # the daemon answered 403 without CORS headers, so the page cannot even read that
    assert text(browser, "#fetch") == "switch:blocked | stop:blocked | activity:blocked"
    assert daemon.backend()["model"] == "tiny-alpha" and daemon.backend()["state"] == "ready"
    for form in ("switch", "stop"):  # a plain form post (no CORS at all) is refused too
        browser.get(f"http://{FOREIGN}{path}")
        until(browser, lambda: browser.title == "done", "the foreign page")
        browser.find_element(By.ID, form).submit()
        refusal = until(browser, lambda: "cross-site request" in (t := text(browser, "body"))
                        and t, f"the refused {form}")
        assert f"http://{FOREIGN}:" in refusal and "daemon.allowed_origins" in refusal
    assert daemon.backend()["model"] == "tiny-alpha" and daemon.backend()["state"] == "ready"

    # the dashboard itself can
    browser.get(daemon.url + "/")
    until(browser, lambda: text(browser, "#active-model") == "tiny-alpha", "the dashboard")
    click_switch(browser, "tiny-beta")
    until(browser, lambda: text(browser, "#active-model") == "tiny-beta", "the dashboard's switch")


def test_a_page_from_an_allowed_origin_can_drive_the_daemon(dash_home: Home, make_daemon,
                                                            browser: Any, page_server) -> None:
    path = page_server("ui.html", "written again once the daemon's port is known")
    port = path.split("/")[0].lstrip(":")
    dash_home.write_config(daemon={"allowed_origins": [f"http://{ALLOWED}:{port}"]})
    daemon = make_daemon()
    page_server("ui.html", EVIL_PAGE.format(daemon=daemon.url))
    assert daemon.switch("tiny-alpha").status_code == 200
    browser.get(f"http://{ALLOWED}{path}")
    result = until(browser, lambda: browser.title == "done" and text(browser, "#fetch"),
                   "the allowed page's requests", timeout=60)
    assert result.startswith("switch:200:") and " | stop:200:" in result
    assert " | activity:200:" in result
    assert daemon.backend()["state"] == "stopped"


def test_the_dashboard_shows_the_idle_countdown_and_pins(real_home: Home, make_daemon,
                                                         browser: Any) -> None:
    from selenium.webdriver.common.by import By

    real_home.write_config(daemon={"idle_unload": "10m"})
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    browser.get(daemon.url + "/")
    countdown = until(browser, lambda: text(browser, "#idle"), "the idle countdown")
    assert countdown.startswith("unloads in 9m") or countdown == "unloads in 10m00s"
    seen: list[int] = []  # the page polls once a second: it shows every second of the count

    def next_value() -> bool:
        m = re.fullmatch(r"unloads in (\d+)m(\d\d)s", text(browser, "#idle"))
        value = int(m[1]) * 60 + int(m[2]) if m else None
        if value is not None and (not seen or seen[-1] != value):
            seen.append(value)
        return len(seen) >= 5

    until(browser, next_value, "five seconds of the countdown")
    assert seen == list(range(seen[0], seen[0] - 5, -1)), seen
    browser.find_element(By.ID, "pin").click()
    click_switch(browser, "tiny-beta")
    until(browser, lambda: text(browser, "#idle") == "pinned — never unloaded for idleness",
          "the pin")
    assert daemon.status()["backend"]["pinned"] is True


def test_the_dashboard_shows_the_saved_caches_and_clears_them(real_home: Home, make_daemon,
                                                               browser: Any) -> None:
    from selenium.webdriver.common.by import By

    real_home.write_config(llama={"ctx_size": 2048}, cache={"min_tokens": 64})
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    prompt = " ".join(f"line {i} of a long prompt." for i in range(40))
    r = daemon.post("/v1/chat/completions", json={"max_tokens": 2, "messages": [
        {"role": "user", "content": prompt}]})
    assert r.status_code == 200, r.text
    browser.get(daemon.url + "/")
    until(browser, lambda: text(browser, "#kv").startswith("kept: saved when it stops"),
          "the active model's KV cache")
    click_switch(browser, "tiny-beta")
    until(browser, lambda: "tiny-alpha" in text(browser, "#caches tbody"), "the saved cache")
    row = text(browser, "#caches tbody")
    assert "yes" in row and "KiB" in row
    click_switch(browser, "tiny-alpha")  # the restore, then what it brought back
    until(browser, lambda: "progress: restoring cache" in text(browser, "#switch-events"),
          "the restoring phase")
    until(browser, lambda: text(browser, "#kv").startswith("restored "), "the restore")
    browser.find_element(By.ID, "caches-clear").click()
    until(browser, lambda: not text(browser, "#caches tbody"), "the clear")
    # no save is left; the directory itself stays, as the running tiny-alpha's --slot-save-path
    assert not list((real_home.runtime / "kv").rglob("*.bin"))
    assert (real_home.runtime / "kv" / "tiny-alpha").is_dir()


def test_the_dashboard_shows_the_rpc_workers_and_what_they_block(
        ports: Ports, tmp_path: Path, real_home: Home, tiny_gguf: Path,
        make_daemon, browser: Any) -> None:
    """A worker that is up and one that is not there yet: the workers card says so, and the
    model needing the missing one shows why it cannot load, until that worker starts."""
    from selenium.webdriver.common.by import By

    from rpckit import RpcWorker

    up = RpcWorker(real_home, "gpu-a", ports.take(), tmp_path).start()
    later = RpcWorker(real_home, "gpu-b", ports.take(), tmp_path)
    try:
        real_home.write_config(workers={"gpu-a": up.address, "gpu-b": later.address},
                               daemon={"rpc_check_interval": "0.5s"})
        real_home.add_model("tiny-rpc", tiny_gguf, llama={"workers": "all"})
        daemon = make_daemon()
        browser.get(daemon.url + "/")
        until(browser, lambda: "gpu-b" in text(browser, "#workers"), "the workers card")
        rows = until(browser, lambda: text(browser, '#workers tr[data-worker="gpu-b"]') if
                     "down" in text(browser, '#workers tr[data-worker="gpu-b"]') else None,
                     "gpu-b shown down")
        assert later.address in rows and "connection refused" in rows
        assert "up" in text(browser, '#workers tr[data-worker="gpu-a"]')
        model = until(browser, lambda: text(browser, '#models tr[data-model="tiny-rpc"]') if
                      "needs RPC worker gpu-b" in text(browser, '#models tr[data-model="tiny-rpc"]')
                      else None, "the model's reason")
        assert "which is down" in model
        button = browser.find_element(By.CSS_SELECTOR, '#models tr[data-model="tiny-rpc"] button')
        assert not button.is_enabled()

        later.start()
        until(browser, lambda: "down" not in text(browser, '#workers tr[data-worker="gpu-b"]'),
              "gpu-b shown up")
        click_switch(browser, "tiny-rpc")  # enabled again: the model can load now
        until(browser, lambda: text(browser, "#active-model") == "tiny-rpc", "tiny-rpc active")
        until(browser, lambda: "serving tiny-rpc" in text(browser, "#workers"),
              "the workers serving it")
        daemon.stop()  # the backend before its workers
    finally:
        for worker in (up, later):
            if worker.proc is not None and worker.proc.poll() is None:
                worker.stop()
