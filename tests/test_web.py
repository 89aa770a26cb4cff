"""The console is served at / with history fallback and never shadows the API, gateway or probes."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaymeter.config import Settings
from relaymeter.web import install_web
from tests.conftest import running_app

INDEX = "<!doctype html><html><head><title>relaymeter</title></head><body><div id=app></div></body></html>"
SCRIPT = "console.log('relaymeter console');" * 50


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(INDEX)
    (root / "assets" / "index-3f9a1c.js").write_text(SCRIPT)
    (root / "assets" / "index-3f9a1c.js.gz").write_bytes(gzip.compress(SCRIPT.encode()))
    (root / "assets" / "index-77aa01.css").write_text("body{margin:0}")
    (root / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (root / ".env").write_text("SECRET=1")
    (tmp_path / "secret.txt").write_text("outside the build")
    return root


@pytest.fixture
async def client(make_settings: Callable[..., Settings], dist: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(make_settings()) as (app, http):
        install_web(app, dist)
        yield http


async def test_index_and_client_routes_get_the_app(client: httpx.AsyncClient) -> None:
    for path in ("/", "/usage?range=7d", "/settings/prices", "/accounts/", "/some/deep/link"):
        res = await client.get(path)
        assert res.status_code == 200, path
        assert res.text == INDEX
        assert res.headers["content-type"].startswith("text/html")
        assert res.headers["cache-control"] == "no-cache"
        assert "default-src 'self'" in res.headers["content-security-policy"]
        assert res.headers["x-content-type-options"] == "nosniff"


async def test_hashed_assets_are_cached_forever_and_typed(client: httpx.AsyncClient) -> None:
    res = await client.get("/assets/index-3f9a1c.js", headers={"accept-encoding": "identity"})
    assert res.status_code == 200
    assert res.text == SCRIPT
    assert res.headers["content-type"].startswith("text/javascript")
    assert res.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "content-encoding" not in res.headers
    css = await client.get("/assets/index-77aa01.css")
    assert css.headers["content-type"].startswith("text/css")
    icon = await client.get("/favicon.svg")
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert "immutable" not in icon.headers["cache-control"]


async def test_precompressed_variant_is_sent_when_accepted(client: httpx.AsyncClient) -> None:
    res = await client.get("/assets/index-3f9a1c.js", headers={"accept-encoding": "gzip, br;q=0"})
    assert res.status_code == 200
    assert res.headers["content-encoding"] == "gzip"
    assert res.headers["vary"] == "Accept-Encoding"
    assert res.text == SCRIPT  # httpx decodes it: the bytes on the wire were the .gz file


async def test_etag_revalidation(client: httpx.AsyncClient) -> None:
    first = await client.get("/")
    again = await client.get("/", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


async def test_missing_asset_is_404_not_html(client: httpx.AsyncClient) -> None:
    for path in ("/assets/index-000000.js", "/missing.png", "/robots.txt"):
        res = await client.get(path)
        assert res.status_code == 404, path
        assert "html" not in res.headers["content-type"]


async def test_api_gateway_and_probe_paths_are_never_the_app(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    me = await client.get("/api/auth/me")
    assert me.status_code == 200 and me.json() == {"authenticated": False}
    for path in ("/api/does-not-exist", "/api", "/v1/nope/nope", "/v0/management-nope", "/metrics/extra"):
        res = await client.get(path)
        assert res.status_code in (401, 404, 405), path
        assert "html" not in res.headers.get("content-type", ""), path
    res = await client.get("/api/does-not-exist")
    assert res.json()["error"]["code"] == "not_found"


async def test_other_methods_are_not_answered_with_the_app(client: httpx.AsyncClient) -> None:
    res = await client.post("/usage", json={})
    assert res.status_code == 404
    assert res.json()["error"]["code"] == "not_found"


async def test_files_outside_the_build_and_dotfiles_are_not_served(client: httpx.AsyncClient) -> None:
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/..%2f..%2fsecret.txt", "/.env"):
        res = await client.get(path)
        assert "outside the build" not in res.text, path
        assert "SECRET" not in res.text, path


async def test_head_requests(client: httpx.AsyncClient) -> None:
    res = await client.head("/assets/index-3f9a1c.js", headers={"accept-encoding": "identity"})
    assert res.status_code == 200
    assert res.content == b""
    assert int(res.headers["content-length"]) == len(SCRIPT)


async def test_helpful_page_when_the_console_is_not_built(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    empty = tmp_path / "empty-dist"
    empty.mkdir()
    async with running_app(make_settings()) as (app, http):
        install_web(app, empty)
        res = await http.get("/overview")
        assert res.status_code == 503
        assert "make ui" in res.text
        assert "/api/docs" in res.text
        assert res.headers["cache-control"] == "no-store"
        # The API keeps working without the console.
        assert (await http.get("/healthz")).status_code == 200


async def test_the_app_factory_installs_the_console(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (_app, http):
        res: Any = await http.get("/accounts")
        # Either the real build or the "not built" page, never a JSON 404.
        assert res.status_code in (200, 503)
        assert res.headers["content-type"].startswith("text/html")
