"""Siren control in Debian's Chromium (Playwright) against real posts (agents on MockFactory
pins), real Mosquitto and central: an operator sounds an RW from /sirens, the activation page
counts both sirens confirmed without a reload, Stop silences them; an admin's city-wide
activation asks for confirmation first. Screenshots at 1366 and 375 px kept in artifacts/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_sirens import PASSWORD, Central, Keys, Posts, post_config, wait_for

from central_sync.broker import LocalMosquitto

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


@pytest.fixture
def world(tmp_path: Path, mosquitto: LocalMosquitto) -> Iterator[tuple[Central, Posts]]:
    keys = Keys(tmp_path / "keys")
    central = Central(tmp_path, mosquitto, keys)
    posts = Posts()
    try:
        for node_id, rw, rt in (("pos-mawar", 5, 3), ("pos-melati", 5, 4), ("pos-kenanga", 6, 1)):
            posts.start(post_config(tmp_path / node_id, mosquitto.port, node_id, rw, rt, keys), central)
        http, _h = central.login("op")
        wait_for(lambda: len([n for n in http.get("/api/nodes").json() if n.get("rw")]) == 3, 60,
                 "three posts known at central")
        http.close()
        yield central, posts
    finally:
        posts.close()
        central.close()


def _playing(posts: Posts, node_id: str) -> bool:
    hw = posts.agents[node_id].hw
    return hw is not None and hw.siren.state().playing


def _login(page: Any, base: str, user: str) -> None:
    page.goto(f"{base}/login?lang=en")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def _no_sideways_scroll(page: Any) -> None:
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{page.url} is {width[0]} px wide in a {width[1]} px window"


def test_group_activation_in_the_browser(world: tuple[Central, Posts]) -> None:
    from playwright.sync_api import expect, sync_playwright

    central, posts = world
    base = central.base
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM),
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_context(viewport={"width": 1366, "height": 800}).new_page()
            _login(page, base, "op")
            page.click("nav a[href='/sirens']")
            page.wait_for_url(f"{base}/sirens")
            # Operators cannot pick the whole city.
            assert page.locator("#group-scope option[value=city]").count() == 0
            page.select_option("#group-scope", "rw")
            page.select_option("#group-area", "33.74.10.1001/5/3")
            page.select_option("#group-type", "KEBAKARAN")
            page.click("#group-start")
            page.wait_for_url(f"{base}/sirens/group-*")
            # Live, without a reload: both sirens of RW 5 confirm.
            expect(page.locator("#n-confirmed")).to_have_text("2", timeout=60_000)
            expect(page.locator("#n-total")).to_have_text("2")
            expect(page.locator("#activation-posts tr.siren-confirmed")).to_have_count(2, timeout=30_000)
            assert _playing(posts, "pos-mawar") and _playing(posts, "pos-melati")
            assert not _playing(posts, "pos-kenanga")
            page.screenshot(path=str(ARTIFACTS / "sirens-activation-1366.png"), full_page=True)
            page.click("#stop-group")
            expect(page.locator("#s-confirmed")).to_have_text("2", timeout=60_000)
            wait_for(lambda: not _playing(posts, "pos-mawar") and not _playing(posts, "pos-melati"), 30,
                     "the group's sirens stopped")
            assert posts.relay("pos-mawar").states[-1].state == 0

            phone = browser.new_context(viewport={"width": 375, "height": 740}).new_page()
            _login(phone, base, "op")
            phone.goto(page.url)
            expect(phone.locator("#n-confirmed")).to_have_text("2")
            _no_sideways_scroll(phone)
            phone.screenshot(path=str(ARTIFACTS / "sirens-activation-375.png"), full_page=True)
            phone.goto(f"{base}/sirens")
            _no_sideways_scroll(phone)

            # An admin's city-wide activation is confirmed in a dialog first; cancel sends nothing.
            admin = browser.new_context(viewport={"width": 1366, "height": 800}).new_page()
            _login(admin, base, "boss")
            admin.goto(f"{base}/sirens")
            admin.select_option("#group-scope", "city")
            admin.click("#group-start")
            expect(admin.locator("#city-confirm")).to_be_visible()
            admin.click("#city-no")
            expect(admin.locator("#city-confirm")).to_be_hidden()
            assert admin.url == f"{base}/sirens"
            admin.click("#group-start")
            admin.click("#city-yes")
            admin.wait_for_url(f"{base}/sirens/group-*")
            expect(admin.locator("#n-confirmed")).to_have_text("3", timeout=60_000)
            assert all(_playing(posts, n) for n in ("pos-mawar", "pos-melati", "pos-kenanga"))
            admin.click("#stop-group")
            wait_for(lambda: not any(_playing(posts, n) for n in ("pos-mawar", "pos-melati", "pos-kenanga")),
                     30, "the city's sirens stopped")
        finally:
            if os.environ.get("KENTONGAN_KEEP_BROWSER") != "1":
                browser.close()
