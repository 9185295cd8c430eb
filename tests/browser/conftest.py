"""Browser tests: pytest-playwright driving Debian's chromium against Django's live_server.

Never `playwright install`: the tests use /usr/bin/chromium (apt-get install chromium). Sync
Playwright runs an event loop in the test thread, so Django's async-safety check must be off for
the ORM calls the tests make (DJANGO_ALLOW_ASYNC_UNSAFE). Screenshots go to test-artifacts/screenshots/
(or $SCREENSHOT_DIR); the folder is printed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.test.utils import override_settings

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = Path(os.environ.get("SCREENSHOT_DIR", ROOT / "test-artifacts" / "screenshots"))
AXE_JS = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
_shots: list[Path] = []


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    path = chromium_path()
    if path is None:
        pytest.fail("chromium is missing: apt-get install -y chromium (never `playwright install`)")
    return {**browser_type_launch_args, "executable_path": path, "args": CHROMIUM_FLAGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    # A viewer in Tokyo with an English browser: the dashboard must show Tokyo times.
    return {
        **browser_context_args,
        "timezone_id": "Asia/Tokyo",
        "locale": "en-US",
        "viewport": {"width": 1280, "height": 900},
    }


@pytest.fixture(scope="session")
def _plain_http_settings():
    """The live server speaks plain HTTP: no HTTPS redirect or HSTS, cookies without the Secure flag.

    Set before the server starts, because SecurityMiddleware reads its settings once, at start.
    """
    override = override_settings(
        SECURE_SSL_REDIRECT=False,
        SECURE_HSTS_SECONDS=0,
        SESSION_COOKIE_SECURE=False,
        CSRF_COOKIE_SECURE=False,
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    )
    override.enable()
    yield
    override.disable()


@pytest.fixture(scope="session")
def live_server(_plain_http_settings, live_server):  # noqa: F811 - pytest-django's, started after the settings
    return live_server


@pytest.fixture
def shoot(page):
    """shoot("name") saves a full-page screenshot and returns its path."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> Path:
        path = SCREENSHOT_DIR / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        _shots.append(path)
        return path

    return take


@pytest.fixture
def axe(page):
    """axe() runs axe-core (served from a local file) on the page; returns serious and critical violations."""

    def run(context: str | None = None) -> list[dict[str, Any]]:
        if not page.evaluate("() => typeof window.axe !== 'undefined'"):
            page.add_script_tag(path=str(AXE_JS))
        result = page.evaluate(
            """async (context) => {
                const tags = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'];
                const options = {runOnly: {type: 'tag', values: tags}};
                const r = await axe.run(context ? document.querySelector(context) : document, options);
                return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                               nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}));
            }""",
            context,
        )
        return [v for v in result if v["impact"] in ("serious", "critical")]

    return run


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _shots:
        terminalreporter.write_line(f"Browser screenshots ({len(_shots)}) in: {SCREENSHOT_DIR}")
