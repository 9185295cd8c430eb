"""/api/docs/ works offline: Swagger UI comes from our own static files (drf-spectacular-sidecar), no CDN."""

from __future__ import annotations

from html.parser import HTMLParser

from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.test import Client

SWAGGER = "drf_spectacular_sidecar/swagger-ui-dist/"
DOCS_ASSETS = [
    f"{SWAGGER}favicon-32x32.png",
    f"{SWAGGER}swagger-ui.css",
    f"{SWAGGER}swagger-ui-bundle.js",
    f"{SWAGGER}swagger-ui-standalone-preset.js",
]


class _Assets(HTMLParser):
    """The address of every script, stylesheet and icon a page loads, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and values.get("src"):
            self.urls.append(str(values["src"]))
        elif tag == "link" and values.get("href"):
            self.urls.append(str(values["href"]))


def _docs_asset_urls(client: Client) -> list[str]:
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    parser = _Assets()
    parser.feed(response.content.decode())
    return parser.urls


def test_docs_page_loads_only_our_own_static_files():
    # when the docs page is rendered
    urls = _docs_asset_urls(Client())

    # then every script, stylesheet and icon is one of ours under STATIC_URL, none from another host
    assert urls == [settings.STATIC_URL + path for path in DOCS_ASSETS]
    # and each of them is a file the static files finders know (so collectstatic gathers it)
    for path in DOCS_ASSETS:
        found = finders.find(path)
        assert isinstance(found, str), path
        assert found.endswith(path)


def test_docs_page_sends_nothing_to_swagger_validator():
    # Swagger UI's default validator badge makes the browser call validator.swagger.io with our schema's URL.
    response = Client().get("/api/docs/")

    assert b'"validatorUrl": null' in response.content
    assert b"validator.swagger.io" not in response.content


def test_docs_assets_are_collected_and_served_with_production_storage(settings, tmp_path):
    # given production's static files setup: WhiteNoise's compressed storage, collectstatic into STATIC_ROOT
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    }
    call_command("collectstatic", interactive=False, verbosity=0)

    # when a browser loads the docs page and then its assets (a new client: WhiteNoise reads STATIC_ROOT anew)
    client = Client()
    urls = _docs_asset_urls(client)

    # then every asset was collected, and WhiteNoise serves it from STATIC_ROOT
    assert urls == [settings.STATIC_URL + path for path in DOCS_ASSETS]
    for path, url in zip(DOCS_ASSETS, urls, strict=True):
        assert (tmp_path / path).is_file(), path
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.getvalue() == (tmp_path / path).read_bytes()
