"""A headless Chromium driven by selenium, for the console's browser tests and its screenshot in docs/.

Chromium and its driver come from Debian (`chromium`, `chromium-driver`; installed here when missing, as root);
selenium is told where both are, so it never looks for a driver on the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infra.native import debian_binary, debian_package

WINDOW = (1360, 1000)


CJK_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")  # the pages' Chinese terms (1.6 MB package)


def prepare() -> tuple[str, str]:
    """(chromium, chromedriver) paths, installed from Debian when missing, with a font for Chinese text."""
    found = debian_binary("chromium", "chromium"), debian_binary("chromedriver", "chromium-driver")
    if not CJK_FONT.exists():
        debian_package("fonts-wqy-microhei")
    return found


def chromium() -> Any:
    """A new headless Chromium session (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = prepare()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--lang=en-US"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


if __name__ == "__main__":  # `python -m infra.browser`: install what the browser tests need
    print(" ".join(prepare()))
