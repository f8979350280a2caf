"""The VM page's forms in Debian's chromium: alloc with memory and vCPUs, the
raw XML editor and its errors (the browser's and the agent's), NICs refused on
a network the user may not use, a teacher without "define" (memory through its
own action, no XML editor), chat with the VM, the audit tab's refusal, and the
page at phone width by keyboard."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import libvirt
from playwright.async_api import expect

from agent_fixtures import grant
from test_web_vm_page import libvirt_xml
from vm_helpers import alloc, unique_name, vm_full, wait_vm_ready
from web_browser import (add_contact, browser, contact, error_line, open_app, open_contact,  # noqa: F401
                         status_line, tab, user_page)


NET_NS = "archipel:hypervisor:network"


async def test_alloc_with_memory_and_vcpus_then_xml_editor_nics_and_chat(browser, stack, agent, admin):  # noqa: F811
    student = stack.user("student2")
    await grant(admin, agent.full_jid, student["jid"], "presence", "alloc")
    # a network granted to the student: the definition form offers it
    lab = unique_name("weblab").lower()
    third = 1 + sum(map(ord, lab)) % 250      # an admin's network: outside the students' pool
    await admin.acp(agent.full_jid, NET_NS, "define", children=[ET.fromstring(
        f"<network><name>{lab}</name><ip address='10.231.{third}.1' prefix='24'/></network>")])
    await admin.acp(agent.full_jid, NET_NS, "grant", {"network": lab, "target": student["jid"], "right": "use"})
    async with user_page(browser, stack) as page:
        await open_app(page, student)
        await add_contact(page, agent.jid)
        await expect(contact(page, agent.jid).locator(".status")).to_have_text(re.compile(r"^Online"))
        await open_contact(page, agent.jid)
        name = unique_name("sized")
        await page.fill("#alloc-name", name)
        await page.fill("#alloc-memory", "192")
        await page.fill("#alloc-vcpus", "2")
        await page.press("#alloc-name", "Enter")
        await expect(status_line(page)).to_have_text(f"Allocate {name}: done.", timeout=40000)
        request = page.locator("#requests .request", has_text=name)
        vm_jid = await request.get_attribute("data-jid")
        uuid = vm_jid.split("@")[0]
        xml = libvirt_xml(stack, uuid)
        assert (xml.findtext("memory"), xml.findtext("vcpu")) == (str(192 * 1024), "2")
        await request.get_by_role("button", name="Accept").click()
        await expect(contact(page, vm_jid).locator(".status")).to_have_text("Off")
        await open_contact(page, vm_jid)
        await expect(page.locator("#entity-pane .vm-info")).to_have_text(re.compile(r"^Memory: 192 MiB · vCPUs: 2"))

        # the raw XML editor: the browser's parse error, then the agent's policy refusal
        await tab(page, "Definition").click()
        xml_box = page.get_by_label("Raw libvirt XML")
        await expect(xml_box).to_have_value(re.compile("<domain"))
        original = await xml_box.input_value()
        await xml_box.fill(original.replace("</domain>", ""))
        await page.get_by_role("button", name="Define from XML").click()
        await expect(error_line(page)).to_have_text(re.compile(r"^Define from XML: not well-formed XML"))
        hostile = original.replace("</devices>", '<interface type="ethernet"><target dev="tap9"/></interface></devices>')
        await xml_box.fill(hostile)
        await page.get_by_role("button", name="Define from XML").click()
        await expect(error_line(page)).to_have_text(re.compile(r"^Define from XML: .*interface type 'ethernet' is not allowed"))
        # the networks this VM may use are offered (network getnames); another one is refused
        await expect(page.locator(f"#vm-usable-networks option[value='{lab}']")).to_have_count(1)
        # a NIC on a network the agent does not allow: its own text
        await page.get_by_role("button", name="Add a NIC").click()
        await page.get_by_label("Network name").fill("not-for-students")
        await page.get_by_role("button", name="Save definition").click()
        await expect(error_line(page)).to_have_text(re.compile(r"^Save definition: .*network 'not-for-students' is not granted to the VM's owner"))
        assert libvirt_xml(stack, uuid).find("devices/interface") is None

        # an LDAP group's grant, then its revocation, from the Permissions tab
        await tab(page, "Permissions").click()
        await page.get_by_label("Grant to a").select_option("group")
        await page.get_by_label("User JID, LDAP group").fill("teachers")
        await page.get_by_label("Permission (or role name)").fill("info")
        await page.get_by_role("button", name="Grant", exact=True).click()
        await expect(status_line(page)).to_have_text("Grant info to teachers: done.")
        granted = page.locator("table[aria-label='Permissions granted'] tr", has_text="teachers")
        await expect(granted).to_contain_text("group")
        await page.get_by_role("button", name="Revoke info from teachers").click()
        await expect(granted).to_have_count(0)

        # chat with the VM (the owner holds "message")
        await tab(page, "Chat").click()
        await page.get_by_label("Message").fill("help")
        await page.keyboard.press("Enter")
        await expect(page.locator(".chat-log li.them")).to_contain_text(re.compile("start", re.I))

        # the VM's audit needs "audit" on the hypervisor: the hypervisor's refusal is shown
        await tab(page, "Audit").click()
        await expect(page.locator(".panel-audit .error")).to_have_text("Audit: Cannot use 'get': permission denied")
        assert page.errors == []


async def test_teacher_without_define_sets_memory_by_its_action_at_phone_width(browser, stack, agent, admin):  # noqa: F811
    teacher = stack.user("teacher1")
    vm_jid = await alloc(admin, agent.full_jid, unique_name("tphone"))
    vm = vm_full(vm_jid, agent.jid)
    await wait_vm_ready(admin, vm)
    await grant(admin, vm, teacher["jid"], "presence", "info", "xmldesc", "memory", "snapshot_get")
    async with user_page(browser, stack, 390, 844) as page:
        await open_app(page, teacher)
        await add_contact(page, vm_jid)
        await expect(contact(page, vm_jid).locator(".status")).to_have_text("Off")
        await contact(page, vm_jid).locator("button.open").focus()
        await page.keyboard.press("Enter")
        tablist = page.get_by_role("tablist", name="VM sections")
        await expect(tablist.get_by_role("tab", name="Definition")).to_have_attribute("aria-selected", "true")
        # what the teacher does not hold is not offered
        await expect(tablist.get_by_role("tab", name="Disks")).to_be_hidden()
        await expect(tablist.get_by_role("tab", name="Permissions")).to_be_hidden()
        await expect(page.get_by_label("Raw libvirt XML")).to_be_hidden()
        await expect(page.get_by_label("Boot order")).to_be_disabled()
        # arrow keys move between the tabs
        await tablist.get_by_role("tab", name="Definition").focus()
        await page.keyboard.press("ArrowRight")
        await expect(tablist.get_by_role("tab", name="Snapshots")).to_be_focused()
        await expect(tablist.get_by_role("tab", name="Snapshots")).to_have_attribute("aria-selected", "true")
        await page.keyboard.press("ArrowLeft")
        await expect(page.get_by_label("Memory (MiB)")).to_be_visible()
        await page.get_by_label("Memory (MiB)").fill("100")
        await page.get_by_label("Memory (MiB)").press("Enter")
        await expect(status_line(page)).to_have_text("Save definition: done.")
        await expect(page.locator("#entity-pane .vm-info")).to_have_text(re.compile(r"^Memory: 100 MiB"))
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert page.errors == []
    conn = libvirt.open(stack.libvirt_uri)
    try:
        assert conn.lookupByUUIDString(vm_jid.split("@")[0]).maxMemory() >= 100 * 1024
    finally:
        conn.close()
