"""The web console in a real browser against a real `relaymeter serve` with a seeded store."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS, PASSWORD, Server, login

pytestmark = pytest.mark.browser


def compact(n: float) -> str:
    """The console's 1.2K / 3.4M formatting (src/lib/format.ts compact)."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n < 1000:
        return sign + str(int(n)) if float(n).is_integer() else sign + f"{n:.1f}".rstrip("0").rstrip(".")
    units = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")]
    for i, (base, suffix) in enumerate(units):
        if n >= base:
            scaled = n / base
            text = f"{scaled:.1f}".rstrip("0").rstrip(".") if scaled < 100 else str(round(scaled))
            if float(text) >= 1000 and i > 0:
                nb, ns = units[i - 1]
                return sign + f"{n / nb:.1f}".rstrip("0").rstrip(".") + ns
            return sign + text + suffix
    raise AssertionError("unreachable")


def money(micros: int) -> str:
    usd = micros / 1_000_000
    if usd == 0:
        return "$0.00"
    if usd < 0.01:
        return f"${usd:.4f}"
    return f"${usd:,.2f}"


def percent(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio * 100:.1f}".rstrip("0").rstrip(".") + "%"


def kpi(page: Any, testid: str) -> Any:
    return page.get_by_test_id(testid).get_by_test_id("kpi-value")


def kpi_label(page: Any, testid: str) -> Any:
    return page.get_by_test_id(testid).locator(".label")


def expect_requests_kpi(page: Any, requests: int) -> None:
    """The usage page's request KPI shows the full count in its title once the data arrived."""
    expect(page.get_by_test_id("usage-kpi-requests")).to_have_attribute("title", f"{requests:,}")


# --- login -------------------------------------------------------------------------------------------


def test_login_says_when_the_password_is_wrong_then_signs_in(new_page: Callable[..., Any]) -> None:
    page = new_page()
    page.goto("/")
    page.wait_for_url(re.compile(r"/login"))
    page.get_by_test_id("password").fill("not-the-password")
    page.get_by_test_id("login-submit").click()
    error = page.get_by_test_id("login-error")
    error.wait_for()
    assert "Wrong password" in error.inner_text()
    page.get_by_test_id("password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("page-overview").wait_for()
    assert page.url.endswith("/")


def test_signed_out_deep_link_returns_there_after_login(new_page: Callable[..., Any]) -> None:
    page = new_page()
    page.goto("/keys")
    page.wait_for_url(re.compile(r"/login\?next=%2Fkeys|/login\?next=/keys"))
    page.get_by_test_id("password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("page-keys").wait_for()
    page.get_by_test_id("logout").click()
    page.wait_for_url(re.compile(r"/login"))
    page.goto("/usage")
    page.wait_for_url(re.compile(r"/login"))


def test_an_expired_session_leads_back_to_login(new_page: Callable[..., Any]) -> None:
    page = new_page()
    login(page, "/accounts")
    page.get_by_test_id("page-accounts").wait_for()
    page.context.clear_cookies()
    page.get_by_test_id("refresh-now").click()
    page.wait_for_url(re.compile(r"/login\?next="))
    page.get_by_test_id("password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("page-accounts").wait_for()


# --- overview ----------------------------------------------------------------------------------------


def test_overview_numbers_equal_the_api(new_page: Callable[..., Any], server: Server) -> None:
    page = new_page()
    login(page)
    data_calls: list[str] = []
    page.on(
        "request",
        lambda req: (
            data_calls.append(req.url)
            if "/api/" in req.url and not re.search(r"/api/(auth/|health|settings)", req.url)
            else None
        ),
    )
    with server.api() as api:
        # Background services (health checks, quota refresh) may change a figure between two
        # reads: compare the page with an answer that was the same before and after it loaded.
        for _attempt in range(3):
            before = api.get("/api/overview").json()
            data_calls.clear()
            page.goto("/")
            page.get_by_test_id("page-overview").wait_for()
            page.wait_for_load_state("networkidle")
            ov = api.get("/api/overview").json()
            if before["kpis"] == ov["kpis"] and before["top_keys"] == ov["top_keys"]:
                break
    k = ov["kpis"]
    assert k["requests_today"] > 0, "the seed must put traffic into today"
    assert kpi(page, "kpi-requests").inner_text() == compact(k["requests_today"])
    assert page.get_by_test_id("kpi-requests").get_attribute("title") == f"{k['requests_today']:,}"
    assert kpi(page, "kpi-tokens").inner_text() == compact(k["tokens_today"])
    assert page.get_by_test_id("kpi-tokens").get_attribute("title") == f"{k['tokens_today']:,}"
    assert kpi(page, "kpi-cost").inner_text() == money(k["cost_today_micros"])
    assert kpi(page, "kpi-success").inner_text() == percent(k["success_rate_today"])
    assert kpi(page, "kpi-accounts").inner_text() == f"{k['accounts_healthy']} / {k['accounts_total']}"
    assert kpi(page, "kpi-keys").inner_text() == str(k["active_api_keys_today"])
    # Top keys and recent requests are the API's rows.
    top_rows = page.get_by_test_id("top-keys").locator("tbody tr")
    assert top_rows.count() == len(ov["top_keys"])
    assert ov["top_keys"][0]["name"] in top_rows.first.inner_text()
    recent = page.get_by_test_id("requests-table").locator("tbody tr")
    assert recent.count() == len(ov["recent_requests"])
    # The page costs one data call, not one per widget.
    assert [u for u in data_calls if "/api/overview" in u], data_calls
    assert len(data_calls) <= 2, data_calls


# --- API keys ------------------------------------------------------------------------------------------


def test_create_api_key_shows_the_secret_once(new_page: Callable[..., Any], server: Server) -> None:
    page = new_page()
    login(page, "/keys")
    page.get_by_test_id("page-keys").wait_for()
    page.get_by_test_id("create-key").click()
    page.get_by_test_id("key-name").fill("browser-test-key")
    page.get_by_test_id("key-daily").fill("12.5")
    page.get_by_test_id("key-save").click()
    secret = page.get_by_test_id("new-key").inner_text().strip()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-key-created-light.png"))
    assert secret.startswith("sk-rm-") and len(secret) > 30
    assert page.get_by_test_id("key-created").get_by_test_id("copy").is_visible()
    page.get_by_test_id("key-done").click()
    page.get_by_test_id("key-created").wait_for(state="detached")
    row = page.get_by_test_id("keys-table").locator("tbody tr", has_text="browser-test-key")
    row.wait_for()
    assert "$12.50" in row.inner_text()
    # Never again: not in the table, not after a reload, not in the API.
    assert secret not in page.content()
    page.reload()
    page.get_by_test_id("keys-table").locator("tbody tr", has_text="browser-test-key").wait_for()
    assert secret not in page.content()
    with server.api() as api:
        listing = api.get("/api/keys").text
    assert "browser-test-key" in listing and secret not in listing


# --- language and theme --------------------------------------------------------------------------------


def test_language_and_theme_switch_and_are_remembered(new_page: Callable[..., Any]) -> None:
    page = new_page(color_scheme="light")
    login(page)
    page.get_by_test_id("page-overview").wait_for()
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    assert page.get_by_test_id("nav-usage").inner_text().strip() == "Usage"

    page.get_by_test_id("language").select_option("zh")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.get_by_test_id("nav-usage")).to_have_text("用量")
    expect(kpi_label(page, "kpi-requests")).to_have_text("今日请求")
    page.get_by_test_id("language").select_option("vi")
    expect(page.locator("html")).to_have_attribute("lang", "vi")
    expect(page.get_by_test_id("nav-usage")).to_have_text("Sử dụng")
    expect(kpi_label(page, "kpi-requests")).to_have_text("Yêu cầu hôm nay")

    # system (light here) -> light -> dark
    page.get_by_test_id("theme-toggle").click()
    page.get_by_test_id("theme-toggle").click()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")

    page.reload()
    page.get_by_test_id("page-overview").wait_for()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == bg
    assert page.get_by_test_id("nav-usage").inner_text().strip() == "Sử dụng"
    assert page.evaluate("localStorage.getItem('rm.locale')") == "vi"


def test_dark_system_preference_is_followed(new_page: Callable[..., Any]) -> None:
    page = new_page(color_scheme="dark")
    page.goto("/login")
    page.get_by_test_id("password").wait_for()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"


def test_auto_refresh_choice_is_remembered(new_page: Callable[..., Any]) -> None:
    page = new_page()
    login(page)
    page.get_by_test_id("refresh-interval").select_option("10")
    page.reload()
    page.get_by_test_id("page-overview").wait_for()
    assert page.get_by_test_id("refresh-interval").input_value() == "10"


# --- usage: range, filters, request detail --------------------------------------------------------------


def test_changing_the_range_updates_the_numbers(new_page: Callable[..., Any], server: Server) -> None:
    page = new_page()
    login(page, "/usage")
    page.get_by_test_id("page-usage").wait_for()
    with server.api() as api:
        today = api.get("/api/summary", params={"range": "today"}).json()["totals"]
        week = api.get("/api/summary", params={"range": "7d"}).json()["totals"]
    assert week["requests"] > today["requests"]
    page.get_by_test_id("usage-kpi-requests").get_by_test_id("kpi-value").wait_for()
    expect_requests_kpi(page, today["requests"])
    page.get_by_test_id("range-picker").locator("[data-value='7d']").click()
    page.wait_for_url(re.compile(r"range=7d"))
    expect_requests_kpi(page, week["requests"])
    assert kpi(page, "usage-kpi-tokens").inner_text() == compact(week["total_tokens"])
    assert kpi(page, "usage-kpi-cost").inner_text() == money(week["cost_micros"])
    total_row = page.get_by_test_id("summary-total")
    assert f"{week['requests']:,}" in total_row.inner_text()
    # The range survives a reload (it lives in the URL).
    page.reload()
    expect_requests_kpi(page, week["requests"])
    # A filter narrows the numbers to what the API says for it.
    with server.api() as api:
        failed = api.get("/api/summary", params={"range": "7d", "status": "failed"}).json()["totals"]
    page.get_by_test_id("filter-status").select_option("failed")
    expect_requests_kpi(page, failed["requests"])
    page.get_by_test_id("clear-filters").click()
    expect_requests_kpi(page, week["requests"])


def test_a_request_opens_in_a_detail_drawer(new_page: Callable[..., Any], server: Server) -> None:
    page = new_page()
    login(page, "/usage?range=24h")
    table = page.get_by_test_id("requests-table")
    table.locator("tbody tr").first.wait_for()
    with server.api() as api:
        first = api.get("/api/requests", params={"range": "24h", "limit": 1}).json()["items"][0]
        detail = api.get(f"/api/requests/{first['id']}").json()
    table.locator("tbody tr").first.click()
    drawer = page.get_by_test_id("request-detail")
    drawer.wait_for()
    assert f"#{first['id']}" in page.get_by_role("dialog").inner_text()
    assert drawer.get_by_test_id("detail-cost").inner_text() == money(detail["cost_micros"])
    assert detail["request_id"] in drawer.inner_text()
    assert f"{detail['total_tokens']:,}" in drawer.inner_text()
    page.keyboard.press("Escape")
    drawer.wait_for(state="detached")
    # Pagination: the next page holds older requests.
    first_row = table.locator("tbody tr").first
    expect(first_row).to_contain_text(first["account_name"] or first["account_label"])
    page.get_by_test_id("page-older").click()
    expect(page.get_by_test_id("page-newer")).to_be_enabled()
    page.wait_for_load_state("networkidle")
    table.locator("tbody tr").first.click()
    expect(page.get_by_role("dialog")).not_to_contain_text(f"#{first['id']}")


def test_times_are_shown_in_the_configured_time_zone(new_page: Callable[..., Any], server: Server) -> None:
    """The browser runs in UTC; the server is set to Tokyo: the console shows Tokyo time."""
    with server.api() as api:
        api.patch("/api/settings", json={"timezone": "Asia/Tokyo"}).raise_for_status()
        try:
            first = api.get("/api/requests", params={"range": "24h", "limit": 1}).json()["items"][0]
            page = new_page()
            login(page, "/usage?range=24h")
            row = page.get_by_test_id("requests-table").locator("tbody tr").first
            row.wait_for()
            # The API's ISO time is in the server's zone: YYYY-MM-DDTHH:MM:SS+09:00.
            assert first["time"].endswith("+09:00")
            today_tokyo = datetime.now(ZoneInfo("Asia/Tokyo")).date().isoformat()
            iso = first["time"]
            shown = iso[11:19] if iso[:10] == today_tokyo else f"{iso[5:10]} {iso[11:16]}"
            expect(row.locator("td").first).to_have_text(shown)
            expect(page.locator(".side-foot")).to_contain_text("Asia/Tokyo")
        finally:
            api.delete("/api/settings/timezone").raise_for_status()


# --- accounts: add, edit, disable, remove ---------------------------------------------------------


def test_account_lifecycle(new_page: Callable[..., Any], server: Server) -> None:
    page = new_page()
    login(page, "/accounts")
    page.get_by_test_id("add-account").click()
    form = page.get_by_test_id("account-form")
    form.get_by_label("Name").fill("lifecycle-acct")
    form.get_by_label("Provider").select_option("openai-compatible")
    form.get_by_label("Base URL").fill("http://127.0.0.1:9/v1")
    form.get_by_label("API key").fill("sk-lifecycle-0123456789")
    form.get_by_label("Priority").fill("70")
    form.get_by_label("Tokens per day").fill("5000000")
    page.get_by_test_id("account-save").click()
    form.wait_for(state="detached")
    row = page.get_by_test_id("accounts-table").locator("tbody tr", has_text="lifecycle-acct")
    expect(row).to_contain_text("70")
    expect(row).to_contain_text("0 / 5M")
    with server.api() as api:
        acct = next(a for a in api.get("/api/accounts").json()["accounts"] if a["name"] == "lifecycle-acct")
    assert acct["daily_token_cap"] == 5_000_000 and acct["base_url"] == "http://127.0.0.1:9/v1"
    assert "sk-lifecycle-0123456789" not in str(acct)
    # Edit: the credential stays when left blank.
    row.get_by_test_id("account-edit").click()
    form.get_by_label("Priority").fill("75")
    page.get_by_test_id("account-save").click()
    form.wait_for(state="detached")
    expect(row).to_contain_text("75")
    row.get_by_test_id("account-toggle").click()
    expect(row.get_by_test_id("health")).to_have_text(re.compile("Disabled"))
    with server.api() as api:
        after = api.get(f"/api/accounts/{acct['id']}").json()
    assert after["enabled"] is False and after["credential"]["present"] is True
    row.get_by_test_id("account-remove").click()
    page.get_by_test_id("confirm-ok").click()
    expect(
        page.get_by_test_id("accounts-table").locator("tbody tr", has_text="lifecycle-acct")
    ).to_have_count(0)


# --- CLIProxyAPI connection ------------------------------------------------------------------------


def test_connect_cliproxyapi_check_status_and_remove(new_page: Callable[..., Any]) -> None:
    from tests.fakes.cpa import FakeCPA, FakeCPAThread

    runner = FakeCPAThread(FakeCPA(management_key="browser-mgmt-key", retention_s=3600))
    cpa = runner.start()
    try:
        page = new_page()
        login(page, "/settings/cpa")
        settings = page.get_by_test_id("cpa-settings")
        settings.wait_for()
        page.get_by_test_id("add-cpa").first.click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_label("Name").fill("browser")
        dialog.get_by_label("CLIProxyAPI URL").fill(cpa.url)
        # A wrong key is refused by the check and nothing is saved.
        dialog.get_by_label("Management key").fill("wrong-key")
        dialog.get_by_role("button", name="Check and save").click()
        expect(dialog.get_by_role("alert")).to_contain_text("CPA check failed")
        dialog.get_by_label("Management key").fill("browser-mgmt-key")
        dialog.get_by_role("button", name="Check and save").click()
        dialog.wait_for(state="detached")
        card = settings.locator(".card", has_text="browser")
        expect(card).to_contain_text(cpa.url)
        expect(card.locator(".badge").first).not_to_have_text("")
        card.get_by_role("button", name="Test").click()
        expect(page.get_by_test_id("toast").last).to_contain_text("connection works")
        page.screenshot(path=str(ARTIFACTS / "console-settings-cpa-connected-light.png"), full_page=True)
        card.get_by_role("button", name="Remove").click()
        page.get_by_test_id("confirm-ok").click()
        expect(settings.locator(".card", has_text=cpa.url)).to_have_count(0)
    finally:
        runner.stop()


# --- accounts import ------------------------------------------------------------------------------------


def test_import_accounts_csv_reports_the_bad_row(
    new_page: Callable[..., Any], server: Server, tmp_path: Any
) -> None:
    csv_file = tmp_path / "accounts.csv"
    csv_file.write_text(
        "name,provider,kind,api_key,priority,max_concurrency,daily_token_cap\n"
        "import-good-1,anthropic,api_key,sk-ant-import-good-1-abcdefgh,80,4,1000000\n"
        "import-bad,nosuchprovider,api_key,sk-bad-0001-abcdefgh,10,1,\n"
        "import-good-2,openai,api_key,sk-import-good-2-abcdefgh,40,2,\n",
        encoding="utf-8",
    )
    page = new_page()
    login(page, "/accounts")
    page.get_by_test_id("page-accounts").wait_for()
    page.get_by_test_id("open-import").click()
    page.get_by_test_id("import-file").set_input_files(str(csv_file))
    page.get_by_test_id("import-preview").click()
    page.get_by_test_id("import-counts").wait_for()
    assert page.get_by_test_id("count-added").inner_text() == "2"
    assert page.get_by_test_id("count-failed").inner_text() == "1"
    page.screenshot(path=str(ARTIFACTS / "console-import-preview-light.png"))
    bad = page.get_by_test_id("import-rows").locator("tr[data-status='failed']")
    assert bad.count() == 1
    assert "provider" in bad.inner_text()
    # Nothing is saved by the preview.
    with server.api() as api:
        names = [a["name"] for a in api.get("/api/accounts").json()["accounts"]]
    assert "import-good-1" not in names
    page.get_by_test_id("import-confirm").click()
    page.get_by_test_id("import-dialog").get_by_role("status").wait_for()
    assert page.get_by_test_id("count-added").inner_text() == "2"
    assert page.get_by_test_id("import-rows").locator("tr[data-status='failed']").count() == 1
    page.keyboard.press("Escape")
    table = page.get_by_test_id("accounts-table")
    table.locator("tbody tr", has_text="import-good-1").wait_for()
    table.locator("tbody tr", has_text="import-good-2").wait_for()
    assert table.locator("tbody tr", has_text="import-bad").count() == 0


# --- every page, light and dark, desktop and phone ------------------------------------------------------

PAGES = [
    ("overview", "/", "page-overview"),
    ("accounts", "/accounts", "page-accounts"),
    ("keys", "/keys", "page-keys"),
    ("usage", "/usage?range=7d", "page-usage"),
    ("quota", "/quota", "page-quota"),
    ("settings-cpa", "/settings/cpa", "cpa-settings"),
    ("settings-prices", "/settings/prices", "price-settings"),
    ("settings-general", "/settings/general", "general-settings"),
    ("settings-password", "/settings/security", "password-form"),
]


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_screenshots_of_every_page(new_page: Callable[..., Any], theme: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = new_page(color_scheme=theme)
    page.goto("/login")
    page.get_by_test_id("password").wait_for()
    page.screenshot(path=str(ARTIFACTS / f"console-login-{theme}.png"))
    login(page)
    for name, path, testid in PAGES:
        page.goto(path)
        page.get_by_test_id(testid).wait_for()
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(400)  # chart animation
        assert not page.locator(".skeleton").count() or name == "quota", f"{name} still loading"
        page.screenshot(path=str(ARTIFACTS / f"console-{name}-{theme}.png"), full_page=True)
    page.goto("/usage?range=24h")
    first_row = page.get_by_test_id("requests-table").locator("tbody tr").first
    first_row.wait_for()
    page.wait_for_load_state("networkidle")  # a row clicked while the list re-renders opens nothing
    first_row.click()
    page.get_by_test_id("request-detail").wait_for()
    page.screenshot(path=str(ARTIFACTS / f"console-request-detail-{theme}.png"))


@pytest.mark.parametrize("name,path,testid", [PAGES[0], PAGES[1], PAGES[3]])
def test_usable_on_a_phone(new_page: Callable[..., Any], name: str, path: str, testid: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = new_page(width=390, height=844)
    login(page, path)
    page.get_by_test_id(testid).wait_for()
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(300)
    # Nothing wider than the screen: tables turn into cards instead of scrolling sideways.
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1, f"{name} is {overflow}px wider than the phone"
    page.screenshot(path=str(ARTIFACTS / f"console-{name}-phone.png"), full_page=True)
    # The navigation is one tap away.
    page.get_by_role("button", name="Open menu").click()
    page.get_by_test_id("nav-keys").click()
    page.get_by_test_id("page-keys").wait_for()
