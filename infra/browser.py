"""A headless Chromium driven by selenium, for the console's browser tests and its screenshot in docs/.

Chromium and its driver come from Debian (`chromium`, `chromium-driver`; installed here when missing, as root);
selenium is told where both are, so it never looks for a driver on the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infra.native import debian_binary, debian_package

WINDOW = (1360, 1000)
WAIT_S = 30  # for a page or an element; the console answers in well under a second


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


def text(driver: Any, css: str, wait_s: float = WAIT_S) -> str:
    """The text of the first element matching `css`, waiting for it to appear (through page loads)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, wait_s, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    return str(wait.until(lambda d: d.find_element(By.CSS_SELECTOR, css).text))


def click(driver: Any, element: Any, wait_s: float = WAIT_S) -> None:
    """Click, and wait until the next page replaced this one (the console's forms answer with a redirect)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    element.click()

    def replaced(_: Any) -> bool:
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # Chromium asked mid-navigation answers this instead of "stale" (seen once in CI: the page was going)
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(driver, wait_s).until(replaced)


def sign_in(driver: Any, console_url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{console_url}/login")
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    click(driver, driver.find_element(By.ID, "sign-in"))


if __name__ == "__main__":  # `python -m infra.browser`: install what the browser tests need
    print(" ".join(prepare()))
