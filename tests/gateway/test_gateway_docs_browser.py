"""The API docs as a newcomer uses them, offline: a headless Chromium (Debian's) opens /docs on
the real gateway, authorizes with a key and runs an embeddings call. Every request the page
makes must go to the gateway itself (no CDN); anything else is blocked and fails the test."""

from __future__ import annotations

import json
import shutil
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Route, sync_playwright

from deploy.local.gateway import GatewayProcess
from tests.fixtures_gateway import ALPHA_KEY

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OPERATION = "#operations-openai-create_embeddings_v1_embeddings_post"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_docs_authorize_and_run_embeddings_offline(gateway: GatewayProcess) -> None:
    origin = urlsplit(gateway.url).netloc
    elsewhere: list[str] = []

    def offline(route: Route) -> None:
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:  # a CDN, fonts: what an offline machine cannot reach
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.route("**/*", offline)
            page.goto(f"{gateway.url}/docs", timeout=20_000)
            page.click("button.authorize", timeout=20_000)  # rendered: Swagger UI's JS loaded
            bearer = page.locator(".auth-container", has_text="bearer")
            bearer.locator("input").fill(ALPHA_KEY)
            bearer.locator("button[type=submit]").click()
            page.click("button.btn-done")
            operation = page.locator(OPERATION)
            operation.locator(".opblock-summary").click()
            operation.locator("button.try-out__btn").click()
            body = {"input": "docs that work offline", "model": "all-MiniLM-L6-v2"}
            operation.locator("textarea.body-param__text").fill(json.dumps(body))
            operation.locator("button.execute").click()
            row = operation.locator(".live-responses-table tr.response").first
            row.wait_for(timeout=20_000)
            status = row.locator(".response-col_status").inner_text().strip()
            assert status.startswith("200"), row.inner_text()
            answer = json.loads(row.locator("pre").first.inner_text())
            assert (
                answer["model"] == "all-MiniLM-L6-v2" and len(answer["data"][0]["embedding"]) == 384
            )
        finally:
            browser.close()
    assert elsewhere == []
