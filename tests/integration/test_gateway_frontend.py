"""The real gateway process and its PWA: "/" is the page for browsers and still the
health check for API clients (v1's contract), and a missing PWA stops nothing."""

from pathlib import Path

import httpx

from services.gateway.security import CONTENT_SECURITY_POLICY
from tests.support.services import start_service

PAGE = '<!doctype html><title>t</title><script type="module" src="__ASSET_BASE__/a.js"></script>'


async def test_the_root_is_the_page_for_browsers_and_the_health_check_for_clients(
    redis_url: str, tmp_path: Path
) -> None:
    site = tmp_path / "frontend"
    (site / "js").mkdir(parents=True)
    (site / "index.html").write_text(PAGE)
    (site / "js" / "a.js").write_text("export {};\n")
    gateway = start_service(
        "gateway", {"REDIS_URL": redis_url, "FRONTEND_DIR": str(site)}, tmp_path
    )
    try:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as client:
            page = await client.get("/", headers={"Accept": "text/html"})
            assert page.status_code == 200
            assert page.text.startswith("<!doctype html>")
            assert "/assets/" in page.text and "__ASSET_BASE__" not in page.text
            assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            health = await client.get("/health")
            for accept in ("application/json", "*/*"):
                root = await client.get("/", headers={"Accept": accept})
                assert root.status_code == health.status_code == 200
                assert root.json() == health.json()
                assert root.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    finally:
        gateway.stop()


async def test_without_a_pwa_the_gateway_starts_and_the_root_is_the_health_check(
    redis_url: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-frontend"
    env = {"REDIS_URL": redis_url, "FRONTEND_DIR": str(missing)}
    gateway = start_service("gateway", env, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as client:
            root = await client.get("/", headers={"Accept": "text/html"})
            assert root.status_code == 200
            assert root.json()["service"] == "gateway"
    finally:
        gateway.stop()
    assert "WARNING" in gateway.logs() and str(missing) in gateway.logs()
