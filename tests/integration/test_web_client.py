"""The browser client (web/) in Debian's chromium against the real stack and agent.

Served by ejabberd's mod_http_fileserver at /web/ on the BOSH/WebSocket
listener; people log in with their LDAP passwords.
"""
from __future__ import annotations

import json
import re
import socket
import urllib.request
import xml.etree.ElementTree as ET

import libvirt
from playwright.async_api import expect

from agent_fixtures import PERMS_NS, grant
from vm_helpers import alloc, libvirt_state, unique_name, vm_full, wait_libvirt_state, wait_vm_ready
from web_browser import browser, contact, login, screenshot, web  # noqa: F401 - fixtures

def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_urls(stack) -> tuple[str, str]:
    """The WebSocket and BOSH URLs of the web client's origin."""
    origin = stack.web_url.rsplit("/web/", 1)[0]
    return origin.replace("http:", "ws:", 1) + "/ws", origin + "/http-bind"


def get(stack, path: str):
    """GET on the rig's HTTP listener with the Host header the browser sends."""
    req = urllib.request.Request(f"http://127.0.0.1:{stack.http_port}{path}",
                                 headers={"Host": f"{stack.domain}:{stack.http_port}"})
    return urllib.request.urlopen(req, timeout=10)


def test_bundle_served_same_origin_as_bosh(stack):
    with get(stack, "/web/") as r:
        assert r.status == 200 and b'<script type="module" src="app.js">' in r.read()
    with get(stack, "/web/app.js") as r:
        assert r.headers["Content-Type"].startswith("application/javascript")
        assert b"http-bind" in r.read()  # the bundle, strophe.js inside: no CDN


async def test_login_prefills_urls_from_origin_and_refuses_a_wrong_password(web, stack):
    ws_url, bosh_url = page_urls(stack)
    assert await web.input_value("#login-ws") == ws_url
    assert await web.input_value("#login-bosh") == bosh_url
    await screenshot(web, "login")
    student = stack.user("student1")
    await login(web, student["jid"], student["password"] + "-wrong")
    await expect(web.locator("#login-error")).to_have_text("Wrong JID or password.")
    assert await web.is_visible("#login-form") and not await web.is_visible("#app-view")
    assert await web.get_attribute("#conn-state", "data-state") == "offline"


async def test_served_over_https_with_bosh_and_websocket_on_the_same_origin(browser, stack):
    """ejabberd's HTTPS listener serves the same client; its URLs follow the page's origin
    (wss:// and https://), the page is a secure context, and a login works."""
    context = await browser.new_context(ignore_https_errors=True)   # the rig's own CA
    page = await context.new_page()
    try:
        await page.goto(stack.https_web_url)
        origin = f"{stack.domain}:{stack.ejabberd.https_port}"
        await expect(page.locator("#login-ws")).to_have_value(f"wss://{origin}/ws")   # once the module ran
        await expect(page.locator("#login-bosh")).to_have_value(f"https://{origin}/http-bind")
        assert await page.evaluate("window.isSecureContext")
        student = stack.user("student1")
        await login(page, student["jid"], student["password"])
        await expect(page.locator("#conn-state")).to_have_text(re.compile(f"^Connected as {re.escape(student['jid'])}"))
    finally:
        await context.close()


async def test_unreachable_server_is_said_so(web, stack):
    student = stack.user("student1")
    port = closed_port()
    await login(web, student["jid"], student["password"], ws_url=f"ws://127.0.0.1:{port}/ws",
                bosh_url=f"http://127.0.0.1:{port}/http-bind")
    await expect(web.locator("#login-error")).to_have_text(re.compile("cannot be reached"), timeout=25000)


async def test_bosh_is_the_fallback_when_websocket_fails(web, stack):
    student = stack.user("student2")
    await login(web, student["jid"], student["password"], ws_url=f"ws://127.0.0.1:{closed_port()}/ws")
    await expect(web.locator("#conn-state")).to_have_text(f"Connected as {student['jid']} over BOSH")


async def test_student_sees_the_hypervisor_live_and_remember_me_keeps_no_password(web, stack, agent, admin):
    student = stack.user("student1")
    await grant(admin, agent.full_jid, student["jid"], "presence")
    await login(web, student["jid"], student["password"], remember=True)
    await expect(web.locator("#conn-state")).to_have_text(f"Connected as {student['jid']} over WebSocket")
    await web.fill("#add-jid", agent.jid)
    await web.press("#add-jid", "Enter")
    hv = contact(web, agent.jid)
    await expect(hv).to_have_count(1)
    await expect(web.locator('section.group[data-role="hypervisor"]').locator(f'[data-jid="{agent.jid}"]')).to_have_count(1)
    await expect(hv.locator(".status")).to_have_text(re.compile(r"^Online \(\d+\)$"))
    await expect(hv).to_have_attribute("data-state", "available")
    stored = await web.evaluate("localStorage.getItem('archipel.login')")
    ws_url, bosh_url = page_urls(stack)
    assert json.loads(stored) == {"jid": student["jid"], "wsUrl": ws_url, "boshUrl": bosh_url}
    assert student["password"] not in await web.evaluate("JSON.stringify(localStorage)")
    # the filter hides what does not match
    await web.fill("#roster-filter", "no-such-thing")
    await expect(hv).to_have_count(0)
    await web.fill("#roster-filter", "online")
    await expect(hv).to_have_count(1)
    assert web.errors == []


async def open_app(web, stack, user: dict) -> None:
    await login(web, user["jid"], user["password"])
    await expect(web.locator("#conn-state")).to_have_text(re.compile(f"^Connected as {re.escape(user['jid'])}"))


async def add_contact(web, jid: str) -> None:
    await web.fill("#add-jid", jid)
    await web.press("#add-jid", "Enter")
    await expect(contact(web, jid)).to_have_count(1)


async def test_student_allocates_accepts_and_starts_a_vm_from_the_page(web, stack, agent, admin):
    student = stack.user("student2")
    await grant(admin, agent.full_jid, student["jid"], "presence", "alloc")
    await open_app(web, stack, student)
    await add_contact(web, agent.jid)
    hv = contact(web, agent.jid)
    await expect(hv.locator(".status")).to_have_text(re.compile(r"^Online"))
    await hv.locator("button.open").click()
    name = unique_name("web")
    await web.fill("#alloc-name", name)
    await web.press("#alloc-name", "Enter")
    await expect(web.locator("#entity-pane .message")).to_have_text(f"Allocate {name}: done.")
    # the new VM asks its owner to see their presence; accepting subscribes back
    request = web.locator("#requests .request")
    await expect(request).to_contain_text(name)  # only the VM: the hypervisor, added by the user, is answered
    vm_jid = await request.get_attribute("data-jid")
    await request.get_by_role("button", name="Accept").click()
    vm = web.locator('section.group[data-role="virtualmachine"]').locator(f'li.contact[data-jid="{vm_jid}"]')
    await expect(vm.locator(".status")).to_have_text("Off")
    await expect(vm.locator(".name")).to_have_text(name)
    await screenshot(web, "roster")
    await vm.locator("button.open").click()
    start = web.get_by_role("button", name="Start")
    await expect(start).to_be_enabled()  # the owner holds "all" (getown)
    await expect(web.locator("#entity-pane .vm-info")).to_have_text(
        re.compile(r"^Memory: \d+ MiB · vCPUs: \d+ · Autostart: no$"))
    await start.click()
    uuid = vm_jid.split("@")[0]
    await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
    await expect(web.locator("#entity-pane .entity-state")).to_have_text("Running")  # through presence
    await expect(vm.locator(".status")).to_have_text("Running")
    await screenshot(web, "vm")
    await web.get_by_role("button", name="Destroy").click()
    await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_SHUTOFF)
    await expect(web.locator("#entity-pane .entity-state")).to_have_text("Off")
    assert web.errors == []


async def test_buttons_follow_what_the_user_holds_and_a_forced_request_shows_the_agents_error(web, stack, agent, admin):
    student = stack.user("student1")
    vm_jid = await alloc(admin, agent.full_jid, unique_name("webro"))
    vm = vm_full(vm_jid, agent.jid)
    await wait_vm_ready(admin, vm)
    await grant(admin, vm, student["jid"], "presence", "reboot")
    await open_app(web, stack, student)
    await add_contact(web, vm_jid)
    item = contact(web, vm_jid)
    await expect(item.locator(".status")).to_have_text("Off")
    await item.locator("button.open").click()
    await expect(web.get_by_role("button", name="Reboot")).to_be_enabled()
    start = web.get_by_role("button", name="Start")
    await expect(start).to_be_disabled()
    await start.evaluate("b => { b.disabled = false; }")  # what a hand-crafted request would do
    await start.click()
    await expect(web.locator("#entity-pane .entity-error")).to_have_text(
        "Start: Cannot use 'create': permission denied")
    assert libvirt_state(stack, vm_jid.split("@")[0]) == libvirt.VIR_DOMAIN_SHUTOFF


async def test_a_dropped_connection_reconnects_by_itself_with_a_visible_state(web, stack, agent, admin):
    student = stack.user("teacher1")
    await grant(admin, agent.full_jid, student["jid"], "presence")
    await open_app(web, stack, student)
    await add_contact(web, agent.jid)
    await expect(contact(web, agent.jid).locator(".status")).to_have_text(re.compile(r"^Online"))
    await web.evaluate("window.states = []; archipel.session.addEventListener('state', e => states.push(e.detail.state))")
    resource = (await web.evaluate("archipel.session.jid")).split("/", 1)[1]
    user, host = student["jid"].split("@")
    stack.ejabberd_api("kick_session", user=user, host=host, resource=resource, reason="test drop")
    await expect(web.locator("#conn-state")).to_have_text(re.compile(r"^Connected as"))
    await web.wait_for_function("states.includes('online')")
    assert (await web.evaluate("states"))[:1] == ["reconnecting"]
    assert await web.evaluate("archipel.session.jid") != f"{student['jid']}/{resource}"  # a new session
    await expect(contact(web, agent.jid).locator(".status")).to_have_text(re.compile(r"^Online"))
    # the drop itself is logged by strophe.js and Chromium; nothing else may be
    assert [e for e in web.errors if not e.startswith("WebSocket")] == []
    await web.get_by_role("button", name="Log out").click()  # and nothing of the session stays
    await expect(web.locator("#login-form")).to_be_visible()
    await expect(web.locator("#conn-state")).to_have_text("Offline")
    assert await web.input_value("#login-password") == ""
    assert await web.evaluate("archipel.roster.items.size") == 0


async def test_remove_a_contact(web, stack, agent, admin):
    student = stack.user("stranger1")
    await grant(admin, agent.full_jid, student["jid"], "presence")
    await open_app(web, stack, student)
    await add_contact(web, agent.jid)
    web.once("dialog", lambda dialog: dialog.accept())
    await contact(web, agent.jid).get_by_role("button", name=f"Remove {agent.jid}").click()
    await expect(contact(web, agent.jid)).to_have_count(0)
    await web.reload()  # the server's roster, not the page's memory
    await open_app(web, stack, student)
    await web.wait_for_function("archipel.roster.loaded === true")
    await expect(contact(web, agent.jid)).to_have_count(0)
    assert web.errors == []


async def test_rights_through_a_group_role_enable_their_buttons(web, stack, agent, admin):
    """Rights a teacher holds only through an LDAP group's role count (getown effective=yes)."""
    teacher = stack.user("teacher1")
    vm_jid = await alloc(admin, agent.full_jid, unique_name("webgrp"))
    vm = vm_full(vm_jid, agent.jid)
    await wait_vm_ready(admin, vm)
    role = unique_name("rebooter")
    await admin.acp(agent.full_jid, PERMS_NS, "setrole", {"name": role},
                    children=[ET.Element("permission", {"name": "reboot"})])
    try:
        await grant(admin, vm, teacher["jid"], "presence")
        await admin.acp(vm, PERMS_NS, "set", children=[ET.Element("permission", {
            "permission_type": "role", "permission_target": "teachers", "permission_name": role,
            "permission_value": "true"})])
        await open_app(web, stack, teacher)
        await add_contact(web, vm_jid)
        await expect(contact(web, vm_jid).locator(".status")).to_have_text("Off")
        await contact(web, vm_jid).locator("button.open").click()
        await expect(web.get_by_role("button", name="Reboot")).to_be_enabled()
        for label in ("Start", "Destroy", "Shutdown"):
            await expect(web.get_by_role("button", name=label)).to_be_disabled()
        assert web.errors == []
    finally:
        await admin.acp(agent.full_jid, PERMS_NS, "delrole", {"name": role})


async def test_keyboard_at_phone_width_and_live_updates_keep_what_is_typed(browser, stack, agent, admin):
    user = stack.user("student1")
    await grant(admin, agent.full_jid, user["jid"], "presence")
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = await context.new_page()
        await page.goto(stack.web_url)
        await page.keyboard.type(user["jid"])  # the JID field has the focus
        await page.keyboard.press("Tab")
        await page.keyboard.type(user["password"])
        await page.keyboard.press("Enter")
        await expect(page.locator("#conn-state")).to_have_text(re.compile("^Connected"))
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        await add_contact(page, agent.jid)
        hv = contact(page, agent.jid)
        await expect(hv.locator(".status")).to_have_text(re.compile(r"^Online \(\d+\)$"))
        await hv.locator("button.open").focus()
        await page.keyboard.press("Enter")
        await page.focus("#alloc-name")
        await page.keyboard.type("half-typed")
        before = await hv.locator(".status").text_content()
        await alloc(admin, agent.full_jid, unique_name("bump"))  # the hypervisor's presence changes
        await expect(hv.locator(".status")).not_to_have_text(before)
        await expect(page.locator("#entity-pane .entity-state")).not_to_have_text(before)
        assert await page.input_value("#alloc-name") == "half-typed"
        assert await page.evaluate("document.activeElement.id") == "alloc-name"
    finally:
        await context.close()
