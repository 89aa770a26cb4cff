"""Browser tests of the web console (Playwright with Debian's chromium)."""
