"""Admin authentication: password login -> HttpOnly session cookie, or an admin bearer token."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from relaymeter.api.errors import ApiError
from relaymeter.security import hash_password, new_token, verify_password
from relaymeter.state import AppState, get_state
from relaymeter.store import admin as admin_store
from relaymeter.store import audit

SESSION_COOKIE = "rm_session"
FREE_FAILURES = 3  # failures before answers are slowed down
LOCK_FAILURES = 10  # failures in the window before logins from that address are refused
FAILURE_WINDOW_S = 15 * 60


@dataclass
class LoginThrottle:
    """Per-client-address failed login counter: slows answers down, then refuses for a while."""

    failures: dict[str, list[float]] = field(default_factory=dict)

    def recent(self, ip: str) -> list[float]:
        cutoff = time.monotonic() - FAILURE_WINDOW_S
        items = [t for t in self.failures.get(ip, []) if t > cutoff]
        self.failures[ip] = items
        return items

    def delay_s(self, ip: str) -> float:
        n = len(self.recent(ip))
        return 0.0 if n < FREE_FAILURES else min(0.25 * 2 ** (n - FREE_FAILURES), 8.0)

    def locked_for_s(self, ip: str) -> int:
        items = self.recent(ip)
        if len(items) < LOCK_FAILURES:
            return 0
        return max(1, int(items[0] + FAILURE_WINDOW_S - time.monotonic()))

    def fail(self, ip: str) -> None:
        self.recent(ip).append(time.monotonic())

    def success(self, ip: str) -> None:
        self.failures.pop(ip, None)


_throttle = LoginThrottle()
_sleep = asyncio.sleep  # indirection so tests can observe the slow-down without waiting
# session token -> time it was last confirmed against the store (avoids a DB read per call)
_session_cache: dict[str, float] = {}
_SESSION_CACHE_S = 30.0


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def check_password(state: AppState, password: str) -> bool:
    env_pw = state.settings.admin_password
    if env_pw is not None and env_pw.get_secret_value():
        return hmac.compare_digest(password.encode(), env_pw.get_secret_value().encode())
    stored = await admin_store.get_password_hash(state.db)
    if not stored:
        return False
    return await asyncio.to_thread(verify_password, password, stored)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return None


async def is_admin(request: Request) -> bool:
    state = get_state(request)
    token = _bearer(request)
    admin_token = state.settings.admin_token
    if token and admin_token is not None and admin_token.get_secret_value():
        if hmac.compare_digest(token.encode(), admin_token.get_secret_value().encode()):
            return True
    session = request.cookies.get(SESSION_COOKIE) or token
    if not session:
        return False
    seen = _session_cache.get(session)
    if seen is not None and time.monotonic() - seen < _SESSION_CACHE_S:
        return True
    if await admin_store.session_valid(state.db, session):
        _session_cache[session] = time.monotonic()
        return True
    _session_cache.pop(session, None)
    return False


async def require_admin(request: Request) -> str:
    """FastAPI dependency for every admin route; returns the actor name for the audit log."""
    if not await is_admin(request):
        raise ApiError(
            401, "unauthorized", "log in as admin (POST /api/auth/login) or send an admin bearer token"
        )
    return "admin"


AdminDep = Depends(require_admin)

router = APIRouter(prefix="/api/auth", tags=["auth"])


class LoginBody(BaseModel):
    password: str = Field(min_length=1, max_length=1024)


class PasswordBody(BaseModel):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


class AuthStatus(BaseModel):
    authenticated: bool


@router.post("/login", response_model=AuthStatus)
async def login(body: LoginBody, request: Request, response: Response) -> AuthStatus:
    state = get_state(request)
    ip = client_ip(request)
    locked = _throttle.locked_for_s(ip)
    if locked:
        raise ApiError(
            429,
            "too_many_attempts",
            f"too many failed logins; try again in {locked} s",
            headers={"Retry-After": str(locked)},
        )
    await _sleep(_throttle.delay_s(ip))
    if not await check_password(state, body.password):
        _throttle.fail(ip)
        await audit.record(state.db, "login.failed", actor="anonymous", client_ip=ip)
        raise ApiError(401, "invalid_password", "wrong admin password")
    _throttle.success(ip)
    token = new_token()
    ttl_ms = state.settings.session_ttl_hours * 3_600_000
    await admin_store.create_session(state.db, token, ttl_ms, ip)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=ttl_ms // 1000,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    await audit.record(state.db, "login", client_ip=ip)
    return AuthStatus(authenticated=True)


@router.post("/logout", response_model=AuthStatus)
async def logout(request: Request, response: Response) -> AuthStatus:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await admin_store.delete_session(get_state(request).db, token)
        _session_cache.pop(token, None)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return AuthStatus(authenticated=False)


@router.get("/me", response_model=AuthStatus)
async def me(request: Request) -> AuthStatus:
    return AuthStatus(authenticated=await is_admin(request))


@router.post("/password", response_model=AuthStatus)
async def change_password(body: PasswordBody, request: Request, actor: str = AdminDep) -> AuthStatus:
    state = get_state(request)
    if state.settings.admin_password is not None:
        raise ApiError(
            409,
            "password_from_env",
            "the admin password is set by RELAYMETER_ADMIN_PASSWORD; change it there",
        )
    if not await check_password(state, body.current_password):
        raise ApiError(403, "invalid_password", "current_password: wrong password")
    await admin_store.set_password_hash(state.db, await asyncio.to_thread(hash_password, body.new_password))
    await admin_store.delete_all_sessions(state.db)
    _session_cache.clear()
    await audit.record(state.db, "admin.password_changed", actor=actor, client_ip=client_ip(request))
    return AuthStatus(authenticated=False)
