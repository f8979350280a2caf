"""The VM console in the browser, at the wire: ``archipel:virtualmachine:vnc display``
and the agent's WebSocket proxy, with raw WebSocket clients against the real stack
(the VM's QEMU speaks RFB behind the proxy), then in a real browser: the web
client's Console section connects noVNC to a tiny Linux guest (rig/guest.py) and
what is typed in the page reaches the guest's shell.
"""
from __future__ import annotations

import asyncio
import datetime
import os
import re
import socket
import ssl

import xml.etree.ElementTree as ET

import libvirt
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from playwright.async_api import expect

from agent_fixtures import admin_client, grant, second_agent
from rig.guest import os_element, tiny_linux
from vm_helpers import CONTROL, DEFINITION, HV_NS, alloc, unique_name, vm_full, wait_libvirt_state, wait_vm_ready
from web_browser import SCREENSHOTS, browser, contact, login, web  # noqa: F401 - fixtures
from xmpp_client import AcpError

NS = "archipel:virtualmachine:vnc"


async def running_vm(client, hv_full_jid: str, hv_jid: str, stack, prefix: str) -> tuple[str, str]:
    """A started VM of the hypervisor (SeaBIOS on its VNC display): (bare JID, full JID)."""
    jid = await alloc(client, hv_full_jid, unique_name(prefix))
    full = vm_full(jid, hv_jid)
    await wait_vm_ready(client, full)
    await client.acp(full, CONTROL, "create")
    await wait_libvirt_state(stack, jid.split("@")[0], libvirt.VIR_DOMAIN_RUNNING)
    return jid, full


@pytest_asyncio.fixture(scope="module")
async def vms(agent, admin, stack):
    """Two running VMs of the session agent; freed at the end."""
    made = [await running_vm(admin, agent.full_jid, agent.jid, stack, "console") for _ in range(2)]
    yield made
    for jid, _full in made:
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def display(client, vm_full_jid: str) -> dict:
    query = await client.acp(vm_full_jid, NS, "display")
    return dict(query.find(f"{{{NS}}}display").attrib)


def console_url(reply: dict, token: str | None = None, path: str | None = None) -> str:
    scheme = "wss" if reply["supportssl"] == "True" else "ws"
    return f"{scheme}://{reply['host']}:{reply['proxy']}{path or reply['path']}?token={token or reply['token']}"


async def banner(url: str, **kw) -> bytes:
    """The first bytes the proxy passes on: QEMU's RFB version banner."""
    async with connect(url, open_timeout=20, **kw) as ws:
        return await asyncio.wait_for(ws.recv(), 20)


async def refused(url: str, **kw) -> tuple[int, str]:
    async with connect(url, open_timeout=20, **kw) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 20)
        return ws.close_code, ws.close_reason


def tcp_listeners(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (IPv4 and IPv6, from /proc)."""
    found = set()
    for table, size in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address if size == 32 else ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


async def test_display_gives_archipels_shape_and_a_token_that_reaches_the_vnc_server_once(agent, admin, new_user, vms):
    (jid, full), _ = vms
    user = await new_user("console")
    await grant(admin, full, user.xmpp.boundjid.bare, "vnc_display")
    reply = await display(user, full)
    uuid = jid.split("@")[0]
    assert reply["type"] == "vnc" and reply["host"] == "127.0.0.1"
    assert reply["onlyssl"] == reply["supportssl"] == "False"
    assert int(reply["proxy"]) > 0 and int(reply["port"]) >= 5900
    assert reply["path"] == f"/vnc/{uuid}" and len(reply["token"]) >= 40
    expires = datetime.datetime.fromisoformat(reply["expires"].replace("Z", "+00:00"))
    assert expires > datetime.datetime.now(datetime.timezone.utc)
    assert reply["url"] == console_url(reply)
    assert (await banner(reply["url"])).startswith(b"RFB 003.00")
    assert await refused(reply["url"]) == (1008, "console token already used")
    # the VNC server itself listens on loopback only: nothing reaches it but through the proxy
    assert tcp_listeners(int(reply["port"])) == {"127.0.0.1"}


async def test_a_token_is_bound_to_its_vm(agent, admin, new_user, vms):
    (jid_a, full_a), (jid_b, full_b) = vms
    user = await new_user("console")
    for full in (full_a, full_b):
        await grant(admin, full, user.xmpp.boundjid.bare, "vnc_display")
    reply_b = await display(user, full_b)
    at_a = console_url(reply_b, path=f"/vnc/{jid_a.split('@')[0]}")
    assert await refused(at_a) == (1008, "console token is for another VM")
    assert await refused(reply_b["url"]) == (1008, "console token already used")  # spent by the wrong try
    assert (await banner((await display(user, full_b))["url"])).startswith(b"RFB 003.00")
    assert (await refused(console_url(reply_b, token="forged-" + "x" * 40)))[1].startswith("unknown console token")


async def test_another_user_gets_no_token_for_a_vm_they_hold_nothing_on(agent, admin, new_user, vms):
    (_jid, full), _ = vms
    owner, other = await new_user("console"), await new_user("console")
    await grant(admin, full, owner.xmpp.boundjid.bare, "vnc_display")
    await grant(admin, full, other.xmpp.boundjid.bare, "info")  # rights on the VM, but not the console
    with pytest.raises(AcpError) as info:
        await display(other, full)
    assert info.value.is_permission_error and info.value.code == -1
    assert info.value.text.startswith("Cannot use 'display': permission denied")
    assert "forbidden" == info.value.condition


async def test_a_revoked_right_closes_the_door_on_a_token_already_issued(agent, admin, new_user, vms):
    (_jid, full), _ = vms
    user = await new_user("console")
    await grant(admin, full, user.xmpp.boundjid.bare, "vnc_display")
    reply = await display(user, full)
    await grant(admin, full, user.xmpp.boundjid.bare, "vnc_display", value=False)
    assert await refused(reply["url"]) == (1008, "vnc_display was revoked")


async def test_display_of_a_stopped_vm_is_a_conflict(agent, admin):
    jid = await alloc(admin, agent.full_jid, unique_name("console-off"))
    full = vm_full(jid, agent.jid)
    try:
        await wait_vm_ready(admin, full)
        with pytest.raises(AcpError) as info:
            await display(admin, full)
        assert info.value.code == -49 and info.value.text.startswith("the VM is not running")
    finally:
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_chat_and_adhoc_give_the_console_url(agent, admin, vms):
    (jid, full), _ = vms
    text = await admin.chat(full, "vnc")
    assert text.startswith(f"Console: ws://127.0.0.1:") and f"/vnc/{jid.split('@')[0]}?token=" in text
    url = text.split()[1]
    assert (await banner(url)).startswith(b"RFB 003.00")
    result = await admin.xmpp.plugin["xep_0050"].send_command(full, f"{NS}#display", timeout=15)
    assert result["command"]["status"] == "completed"
    url = "\n".join(result["command"]["form"].get_values()["result"]).split()[1]
    assert (await banner(url)).startswith(b"RFB 003.00")


async def test_unused_tokens_are_bounded_per_user(agent, admin, new_user, vms):
    (_jid, full), _ = vms
    user = await new_user("console")
    await grant(admin, full, user.xmpp.boundjid.bare, "vnc_display")
    for _ in range(32):
        await display(user, full)
    with pytest.raises(AcpError) as info:
        await display(user, full)
    assert info.value.code == -52 and "unused console tokens already" in info.value.text


async def test_a_proxy_port_in_use_is_reported_and_the_agent_serves_on(stack):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        handle = second_agent(stack, "hv-console-busy", overrides={"VNC": {"vnc_proxy_port": str(busy.getsockname()[1])}})
        handle.process.start()
        admin = await admin_client(stack, "console-busy")
        jid = None
        try:
            await handle.wait_ready(admin)
            assert handle.process.wait_log("console proxy cannot listen on", timeout=5)
            jid, full = await running_vm(admin, handle.full_jid, handle.jid, stack, "console-busy")
            with pytest.raises(AcpError) as info:
                await display(admin, full)
            assert info.value.code == -48 and "console proxy is not running" in info.value.text
        finally:
            if jid:
                await admin.acp(handle.full_jid, HV_NS, "free", {"jid": jid})
            await admin.close()
            handle.process.stop()


async def test_tls_and_expiry_on_an_agent_configured_for_them(stack, agent, vms):
    """A second agent: wss with the rig's certificate, tokens that live 2 s; each agent
    opens only its own VMs' consoles with its own tokens."""
    handle = second_agent(stack, "hv-console", overrides={"VNC": {
        "vnc_certificate_file": str(stack.certs.server_cert), "vnc_key_file": str(stack.certs.server_key),
        "vnc_token_lifetime": "2"}})
    handle.process.start()
    admin = await admin_client(stack, "console-tls")
    jid = None
    try:
        await handle.wait_ready(admin)
        jid, full = await running_vm(admin, handle.full_jid, handle.jid, stack, "console-tls")
        context = ssl.create_default_context(cafile=str(stack.ca_file))
        reply = await display(admin, full)
        assert reply["onlyssl"] == reply["supportssl"] == "True" and reply["url"].startswith("wss://")
        await asyncio.sleep(2.5)  # past its lifetime
        assert await refused(reply["url"], ssl=context) == (1008, "console token expired")
        for _ in range(5):  # a fresh one works (asked again if this busy machine let it expire)
            reply = await display(admin, full)
            try:
                assert (await banner(reply["url"], ssl=context)).startswith(b"RFB 003.00")
                break
            except ConnectionClosed as exc:
                assert exc.rcvd.reason == "console token expired"
        else:
            pytest.fail("no token was used within its lifetime in 5 tries")
        with pytest.raises(Exception):  # and never in clear
            await banner(reply["url"].replace("wss://", "ws://", 1))
        # several hypervisors: a token is good only at the proxy of the agent that issued it
        (_jid, session_vm), _ = vms
        here = await display(admin, session_vm)  # the session agent's (ws://, its own port)
        there = await display(admin, full)
        assert here["proxy"] != there["proxy"]
        elsewhere = f"wss://{there['host']}:{there['proxy']}{here['path']}?token={here['token']}"
        assert (await refused(elsewhere, ssl=context))[1].startswith("unknown console token")
        elsewhere = f"ws://{here['host']}:{here['proxy']}{there['path']}?token={there['token']}"
        assert (await refused(elsewhere))[1].startswith("unknown console token")
    finally:
        if jid:
            await admin.acp(handle.full_jid, HV_NS, "free", {"jid": jid})
        await admin.close()
        handle.process.stop()


# ------------------------------------------------------------------ in the browser
# `mark WORDS` writes MARK WORDS on the serial line: a command typed without Shift
GUEST_SCRIPT = """printf '#!/bin/sh\\necho "MARK $*" > /dev/ttyS0\\n' > /bin/mark
chmod 755 /bin/mark
echo 1 > /proc/sys/kernel/ctrl-alt-del   # Ctrl-Alt-Del reboots at once: seen as a second boot
echo GUEST-READY > /dev/ttyS0
"""
CANVAS = """() => {
  const c = document.querySelector('.console-screen canvas');
  if (!c || !c.width) return null;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let hash = 0; const colors = new Set();
  for (let i = 0; i < d.length; i += 4) {
    hash = (Math.imul(hash, 31) + d[i] + d[i + 1] * 7 + d[i + 2] * 13) >>> 0;
    if (colors.size < 4) colors.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  }
  return {hash, colors: colors.size, width: c.width, height: c.height};
}"""


async def linux_vm(admin, agent, stack) -> tuple[str, str, object]:
    """A running tiny Linux guest (TCG) whose shell is on the VGA console; its serial line in a file."""
    jid = await alloc(admin, agent.full_jid, unique_name("console-linux"))
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    folder = stack.storage_dir / jid.split("@")[0]
    kernel, initrd = await asyncio.to_thread(tiny_linux, folder, GUEST_SCRIPT)
    serial = folder / "serial.log"
    domain = ET.fromstring(f"""<domain type='qemu'><memory unit='MiB'>160</memory><vcpu>1</vcpu>
      {os_element(kernel, initrd, "console=ttyS0 console=tty0")}
      <devices><serial type='file'><source path='{serial}'/></serial>
        <graphics type='vnc' port='-1' autoport='yes'/><video><model type='vga'/></video></devices></domain>""")
    await admin.acp(full, DEFINITION, "define", children=[domain])
    await admin.acp(full, CONTROL, "create")
    await wait_libvirt_state(stack, jid.split("@")[0], libvirt.VIR_DOMAIN_RUNNING)
    return jid, full, serial


async def serial_says(serial, text: str, timeout: float = 240) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while text not in (serial.read_text(errors="replace") if serial.exists() else ""):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{text!r} never came on the serial line:\n{serial.read_text(errors='replace')[-1500:]}")
        await asyncio.sleep(0.5)


async def settled_canvas(page, timeout: float = 120) -> dict:
    """The canvas once two reads a second apart agree (the guest stopped writing)."""
    deadline = asyncio.get_running_loop().time() + timeout
    before = await page.evaluate(CANVAS)
    while True:
        await asyncio.sleep(1)
        now = await page.evaluate(CANVAS)
        if now == before or asyncio.get_running_loop().time() > deadline:
            return now
        before = now


@pytest.mark.timeout(420)
async def test_a_student_types_into_a_linux_guest_from_the_vm_page(web, stack, agent, admin):
    student = stack.user("student1")
    jid, full, serial = await linux_vm(admin, agent, stack)
    try:
        await grant(admin, full, student["jid"], "presence", "vnc_display")
        await login(web, student["jid"], student["password"])
        await expect(web.locator("#conn-state")).to_have_text(re.compile("^Connected as"))
        await web.fill("#add-jid", jid)
        await web.press("#add-jid", "Enter")
        item = contact(web, jid)
        await expect(item.locator(".status")).to_have_text("Running", timeout=30000)
        await item.locator("button.open").click()
        await web.get_by_role("tab", name="Console").click()
        section = web.get_by_role("region", name="Console")
        await expect(section.get_by_role("button", name="Send Ctrl-Alt-Del to the VM")).to_be_disabled()
        await section.get_by_role("button", name="Connect").click()
        await expect(section.get_by_role("status")).to_have_text(re.compile("^Connected"), timeout=30000)
        await expect(section.get_by_role("button", name="Send Ctrl-Alt-Del to the VM")).to_be_enabled()
        await expect(section.get_by_role("button", name="Show the console full screen")).to_be_enabled()
        # the screen shows something (boot text on black), then the guest's shell waits
        await web.wait_for_function(f"(({CANVAS})() || {{colors: 0}}).colors >= 2", timeout=120000)
        await serial_says(serial, "GUEST-READY")
        quiet = await settled_canvas(web)
        assert quiet["colors"] >= 2 and quiet["width"] >= 640
        # real key presses on the canvas go through noVNC and the proxy to the guest
        await web.locator(".console-screen canvas").click()
        await web.keyboard.type("mark keys-")
        await web.keyboard.press("Shift+KeyA")  # a held modifier travels too
        await web.keyboard.type("ok")
        await web.keyboard.press("Enter")
        await serial_says(serial, "MARK keys-Aok", timeout=60)
        await web.wait_for_function(f"({CANVAS})().hash !== {quiet['hash']}", timeout=30000)
        # "Send text" types a paste as keys (Shift where the US layout needs it)
        await section.get_by_label("Paste (typed as keys)").fill("echo PASTED-$((7*6)) > /dev/ttyS0\n")
        await section.get_by_role("button", name="Send text").click()
        await serial_says(serial, "PASTED-42", timeout=60)
        if os.environ.get("ARCHIPEL_SCREENSHOTS"):  # the section alone: the VM page's other parts are another test's
            await section.screenshot(path=str(SCREENSHOTS / "console.png"))
        # scaling: off shows the guest's 720 px wide text screen as is
        canvas = section.locator(".console-screen canvas")
        await section.get_by_label("Scale to fit").uncheck()
        await expect(canvas).to_have_css("width", "720px")
        await section.get_by_label("Scale to fit").check()
        await expect(canvas).not_to_have_css("width", "720px")
        await section.get_by_role("button", name="Send Ctrl-Alt-Del to the VM").click()
        deadline = asyncio.get_running_loop().time() + 240
        while serial.read_text(errors="replace").count("GUEST-READY") < 2:  # the guest booted again
            assert asyncio.get_running_loop().time() < deadline, "Ctrl-Alt-Del did not reboot the guest"
            await asyncio.sleep(0.5)
        await section.get_by_role("button", name="Disconnect").click()
        await expect(section.get_by_role("status")).to_have_text("Disconnected.")
        # the rig serves the page over plain HTTP, so noVNC warns (a site serves HTTPS, see README)
        assert [e for e in web.errors if not e.startswith("noVNC requires a secure context")] == []
    finally:
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})
