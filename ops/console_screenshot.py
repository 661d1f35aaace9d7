"""`make docs` part: the operator console's overview after the demo's day, as docs/console-overview.png.

Runs the demo on a stack of its own (free ports, a temporary folder, wiped afterwards), signs in to the console
in headless Chromium, runs the audit and waits for the chart, then saves the screenshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium.webdriver.common.by import By

from infra import browser, supervised
from infra.native import ROOT, StackError
from shared.settings import DEV_OPERATOR_TOKEN

OUT = ROOT / "docs" / "console-overview.png"
CHART_WAIT_S = 60
CHART_POINTS = 8  # 40 s of samples: the demo's burst and the quiet after it


def main() -> int:
    state = Path(tempfile.mkdtemp(prefix="docs-stack-"))
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    env.update(MUTUALAID_STATE_DIR=str(state), **supervised.free_ports_env())
    try:
        done = subprocess.run([sys.executable, "-m", "ops.demo"], env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        if done.returncode != 0:
            raise StackError(f"the demo failed, so there is nothing to show:\n{done.stdout[-3000:]}")
        console = json.loads((state / "services.json").read_text())["console"]["url"]
        driver = browser.chromium()
        try:
            browser.sign_in(driver, console, DEV_OPERATOR_TOKEN)
            browser.text(driver, "#run-audit")
            browser.click(driver, driver.find_element(By.ID, "run-audit"))
            deadline = time.monotonic() + CHART_WAIT_S
            while int(driver.find_element(By.ID, "chart").get_attribute("data-points") or 0) < CHART_POINTS \
                    and time.monotonic() < deadline:
                time.sleep(2)
                driver.get(f"{console}/")
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(browser.WINDOW[0], min(int(height) + 40, 2400))
            driver.save_screenshot(str(OUT))
        finally:
            driver.quit()
    finally:
        supervised.reset(state)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
