"""Serves the built web console (relaymeter/web/dist) at `/` with history-mode fallback.

Installed as the router's fallback, so it only sees paths no API/gateway route matched.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from pathlib import Path
from urllib.parse import unquote

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

DIST_DIR = Path(__file__).resolve().parent / "dist"
# Paths owned by the API, the gateway and operations endpoints: never answered with the SPA.
RESERVED_PREFIXES = ("/api", "/v1", "/v0", "/metrics", "/healthz", "/readyz")
IMMUTABLE = "public, max-age=31536000, immutable"  # Vite puts a content hash in /assets/ names
REVALIDATE = "no-cache"  # index.html must always be checked so a new build is picked up
SHORT = "public, max-age=3600"
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
# The console loads only its own files; ECharts draws on canvas, styles may be inline.
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; font-src 'self' data:; frame-ancestors 'none'; "
    "base-uri 'self'; form-action 'self'"
)

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("image/svg+xml", ".svg")
mimetypes.add_type("font/woff2", ".woff2")
mimetypes.add_type("application/manifest+json", ".webmanifest")

NOT_BUILT_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>relaymeter — console not built</title>
<style>
body{font:15px/1.55 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;display:grid;place-items:center;
min-height:100vh;background:#f6f7f9;color:#1c2430}
@media (prefers-color-scheme:dark){body{background:#0f1319;color:#e4e8ee}main{background:#171c24!important;
border-color:#283040!important}code{background:#222a36!important}}
main{max-width:560px;margin:24px;padding:28px 32px;background:#fff;border:1px solid #e3e7ed;border-radius:12px}
h1{font-size:20px;margin:0 0 8px}code{background:#eef1f5;padding:2px 6px;border-radius:5px;font-size:13px}
li{margin:6px 0}a{color:#3b6cf6}
</style></head><body><main>
<h1>The web console is not built</h1>
<p>relaymeter is running and its API works, but the console's files are missing from this install.</p>
<ul>
<li>From a source checkout: run <code>make ui</code> (needs Node.js 20+ and npm), then reload this page.</li>
<li>Or install a release wheel, which ships the built console.</li>
</ul>
<p>Meanwhile the JSON API is documented at <a href="/api/docs">/api/docs</a>.</p>
</main></body></html>
"""


def _etag(stat: os.stat_result) -> str:
    return (
        '"'
        + hashlib.md5(f"{stat.st_mtime_ns}-{stat.st_size}".encode(), usedforsecurity=False).hexdigest()
        + '"'
    )


def _safe_file(root: Path, rel: str) -> Path | None:
    """The regular file ``rel`` under ``root``, or None (missing, a directory, or outside root)."""
    if not rel or "\x00" in rel or "\\" in rel:
        return None
    parts = [p for p in rel.split("/") if p]
    if any(p in (".", "..") or p.startswith(".") for p in parts):
        return None
    candidate = root.joinpath(*parts)
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError):
        return None
    if root not in resolved.parents or not resolved.is_file():
        return None
    return resolved


def _accepts(request: Request, encoding: str) -> bool:
    """Whether Accept-Encoding lists ``encoding`` with a non-zero quality."""
    for item in request.headers.get("accept-encoding", "").split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() != encoding:
            continue
        quality = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else "1"
        try:
            return float(quality) > 0
        except ValueError:
            return True
    return False


class WebConsole:
    """ASGI fallback: static files of the build, index.html for client-side routes."""

    def __init__(self, not_found: ASGIApp, dist_dir: Path = DIST_DIR) -> None:
        self.not_found = not_found
        self.dist_dir = dist_dir

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = unquote(scope.get("path", "/"))
        if (
            scope["type"] != "http"
            or scope.get("method") not in ("GET", "HEAD")
            or any(path == p or path.startswith(p + "/") for p in RESERVED_PREFIXES)
        ):
            await self.not_found(scope, receive, send)
            return
        response = self.respond(Request(scope, receive), path)
        await response(scope, receive, send)

    def respond(self, request: Request, path: str) -> Response:
        root = self.dist_dir.resolve()
        index = root / "index.html"
        if not index.is_file():
            return HTMLResponse(
                NOT_BUILT_HTML, status_code=503, headers={"Cache-Control": "no-store", **_SECURITY_HEADERS}
            )
        rel = path.lstrip("/")
        file = _safe_file(root, rel) if rel else None
        if file is not None and file.name != "index.html":
            cache = IMMUTABLE if rel.startswith("assets/") else SHORT
            return self._file(request, file, cache)
        last = rel.rsplit("/", 1)[-1]
        if rel.startswith("assets/") or (file is None and "." in last and not last.endswith(".html")):
            # A missing asset must be a 404, not HTML that the browser would try to run as a script.
            return Response("Not Found", status_code=404, media_type="text/plain", headers=_SECURITY_HEADERS)
        return self._file(request, index, REVALIDATE, extra={"Content-Security-Policy": _CSP})

    def _file(
        self, request: Request, file: Path, cache: str, extra: dict[str, str] | None = None
    ) -> Response:
        media_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type in ("application/json", "image/svg+xml"):
            media_type += "; charset=utf-8"
        headers = {"Cache-Control": cache, "Vary": "Accept-Encoding", **_SECURITY_HEADERS, **(extra or {})}
        served, stat = file, file.stat()
        for encoding, suffix in ENCODINGS:
            compressed = file.with_name(file.name + suffix)
            if _accepts(request, encoding) and compressed.is_file():
                served, stat = compressed, compressed.stat()
                headers["Content-Encoding"] = encoding
                break
        headers["ETag"] = _etag(stat)
        if headers["ETag"] in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        return FileResponse(served, media_type=media_type, headers=headers, stat_result=stat)


def install_web(app: FastAPI, dist_dir: Path = DIST_DIR) -> None:
    """Serve the console for every GET that no route matched (so it can never shadow an API route)."""
    app.router.default = WebConsole(app.router.not_found, dist_dir)
