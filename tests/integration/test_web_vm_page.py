"""The issue's scenario in Debian's chromium against the real stack: a student
allocates a VM within quota, sets its memory, creates a disk, puts an ISO in the
CD drive, starts it; a teacher in a second browser context, granted on that VM
from the student's page, sees the changes live; what the teacher does not hold
is disabled and refused by the agent with its own text; snapshots."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import libvirt
from playwright.async_api import expect

from agent_fixtures import grant
from vm_helpers import unique_name, wait_libvirt_state
from web_browser import (add_contact, browser, contact, error_line, open_app, open_contact, screenshot,  # noqa: F401
                         status_line, tab, user_page)

QUOTA_NS = "archipel:quota"


def libvirt_xml(stack, uuid: str) -> ET.Element:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return ET.fromstring(conn.lookupByUUIDString(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    finally:
        conn.close()


async def used_vms(admin, hv: str, user: str) -> int:
    usage = (await admin.acp(hv, QUOTA_NS, "usage", {"target": user}))[0]
    return int(next(r.get("used") for r in usage if r.get("name") == "vms"))


async def test_student_builds_a_vm_and_a_granted_teacher_follows_it_live(browser, stack, agent, admin):  # noqa: F811
    student, teacher = stack.user("student1"), stack.user("teacher1")
    iso_dir = stack.storage_dir.parent / "iso"
    iso_dir.mkdir(exist_ok=True)
    iso = iso_dir / f"{unique_name('install')}.iso"
    iso.write_bytes(b"\0" * 2048 * 16)
    await grant(admin, agent.full_jid, student["jid"], "presence", "alloc")
    await grant(admin, agent.full_jid, teacher["jid"], "presence")
    used = await used_vms(admin, agent.full_jid, student["jid"])
    await admin.acp(agent.full_jid, QUOTA_NS, "set", {"target": student["jid"], "vms": str(used + 1)})
    try:
        async with user_page(browser, stack) as page:
            await open_app(page, student)
            await add_contact(page, agent.jid)
            await expect(contact(page, agent.jid).locator(".status")).to_have_text(re.compile(r"^Online"))
            await open_contact(page, agent.jid)
            # within quota: allocated; the next one is refused with the agent's own text
            name = unique_name("course")
            await page.fill("#alloc-name", name)
            await page.press("#alloc-name", "Enter")
            await expect(status_line(page)).to_have_text(f"Allocate {name}: done.")
            await page.fill("#alloc-name", name + "-2")
            await page.press("#alloc-name", "Enter")
            await expect(error_line(page)).to_have_text(re.compile(rf"^Allocate {name}-2: .*quota", re.I))
            request = page.locator("#requests .request")
            await expect(request).to_contain_text(name)
            vm_jid = await request.get_attribute("data-jid")
            uuid = vm_jid.split("@")[0]
            await request.get_by_role("button", name="Accept").click()
            await expect(contact(page, vm_jid).locator(".status")).to_have_text("Off")
            await open_contact(page, vm_jid)
            await expect(page.get_by_role("button", name="Start", exact=True)).to_be_enabled()

            # memory, through the definition form
            await tab(page, "Definition").click()
            await expect(page.locator("#vm-memory")).not_to_have_value("")
            await page.fill("#vm-memory", "256")
            await page.get_by_role("button", name="Save definition").click()
            await expect(status_line(page)).to_have_text("Save definition: done.")
            await expect(page.locator("#entity-pane .vm-info")).to_have_text(re.compile(r"^Memory: 256 MiB"))
            assert libvirt_xml(stack, uuid).findtext("memory") == str(256 * 1024)

            # a disk, attached to the definition
            await tab(page, "Disks").click()
            await page.fill("#disk-name", "system")
            await page.fill("#disk-size", "1")
            await page.get_by_role("button", name="Create disk").click()
            await expect(status_line(page)).to_have_text("Create disk system: done.")
            row = page.locator("table[aria-label=Disks] tbody tr", has_text="system.qcow2")
            await expect(row).to_contain_text("yes")  # in use: attached
            await expect(page.locator(".iso-list")).to_contain_text(iso.name)
            sources = [d.find("source").get("file") for d in libvirt_xml(stack, uuid).iter("disk")]
            assert any(s.endswith("/system.qcow2") for s in sources)

            # the ISO in the CD drive
            await tab(page, "Definition").click()
            await page.select_option("#vm-iso", str(iso))
            await page.get_by_role("button", name="Save definition").click()
            await expect(status_line(page)).to_have_text("Save definition: done.")
            cdrom = next(d for d in libvirt_xml(stack, uuid).iter("disk") if d.get("device") == "cdrom")
            assert cdrom.find("source").get("file") == str(iso)

            # the student grants the teacher from the VM's Permissions tab
            await tab(page, "Permissions").click()
            for perm in ("presence", "info", "reboot"):
                await page.get_by_label("Grant to a").select_option("user")
                await page.get_by_label("User JID, LDAP group").fill(teacher["jid"])
                await page.get_by_label("Permission (or role name)").fill(perm)
                await page.get_by_role("button", name="Grant", exact=True).click()
                await expect(status_line(page)).to_have_text(f"Grant {perm} to {teacher['jid']}: done.")
            await expect(page.locator("table[aria-label='Permissions granted']")).to_contain_text("reboot")
            await screenshot(page, "vm-permissions")

            async with user_page(browser, stack) as tpage:
                await open_app(tpage, teacher)
                await add_contact(tpage, vm_jid)
                await expect(contact(tpage, vm_jid).locator(".status")).to_have_text("Off")
                await open_contact(tpage, vm_jid)
                start = tpage.get_by_role("button", name="Start", exact=True)
                await expect(tpage.get_by_role("button", name="Reboot")).to_be_enabled()
                for label in ("Start", "Shutdown", "Destroy", "Suspend"):
                    await expect(tpage.get_by_role("button", name=label, exact=True)).to_be_disabled()
                # a forced request is refused by the agent, whose text the page shows
                refused = await tpage.evaluate("""async (to) => {
                    try { await archipel.session.acp(to, "archipel:vm:control", "create", {}, "set"); return "sent"; }
                    catch (e) { return e.message; } }""", f"{vm_jid}/{agent.jid.split('@')[0]}")
                assert refused == "Cannot use 'create': permission denied"
                await start.evaluate("b => { b.disabled = false; }")
                await start.click()
                await expect(error_line(tpage)).to_have_text("Start: Cannot use 'create': permission denied")
                await expect(tpage.locator("#entity-pane .vm-info")).to_have_text(re.compile(r"^Memory: 256 MiB"))

                # the student starts it: the teacher sees it live, without reload
                await page.get_by_role("button", name="Start", exact=True).click()
                await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
                await expect(tpage.locator("#entity-pane .entity-state")).to_have_text("Running")
                await expect(contact(tpage, vm_jid).locator(".status")).to_have_text("Running")

                # a grant made now reaches the teacher's open page (permissions push)
                await page.get_by_label("User JID, LDAP group").fill(teacher["jid"])
                await page.get_by_label("Permission (or role name)").fill("destroy")
                await page.get_by_role("button", name="Grant", exact=True).click()
                await expect(tpage.get_by_role("button", name="Destroy", exact=True)).to_be_enabled()
                await tpage.get_by_role("button", name="Destroy", exact=True).click()
                await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_SHUTOFF)
                await expect(page.locator("#entity-pane .entity-state")).to_have_text("Off")

                # the teacher's table: state, owner, memory
                await tpage.get_by_role("button", name="Table of my VMs").click()
                row = tpage.locator(f'table.teacher-table tr[data-jid="{vm_jid}"]')
                await expect(row.locator(".state")).to_have_text("Off")
                await expect(row.locator(".owner")).to_have_text(student["jid"])
                await expect(row.locator(".memory")).to_have_text("256 MiB")
                await row.get_by_role("checkbox").check()
                await tpage.get_by_role("button", name="Power on selected").click()
                await expect(row.locator(".result")).to_have_text("Power on: Cannot use 'create': permission denied")
                # live in the table too; bulk power off with the "destroy" the teacher holds
                await page.get_by_role("button", name="Start", exact=True).click()
                await expect(row.locator(".state")).to_have_text("Running")
                await tpage.get_by_role("button", name="Power off selected").click()
                await expect(row.locator(".result")).to_have_text("Power off: done")
                await expect(row.locator(".state")).to_have_text("Off")
                await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_SHUTOFF)
                await screenshot(tpage, "teacher-table")
                assert [e for e in tpage.errors if "permission denied" not in e] == []

            # snapshots: take, then revert (the VM is off: its qcow2 disk takes them)
            await tab(page, "Snapshots").click()
            await page.fill("#snap-name", "clean")
            await page.get_by_role("button", name="Take snapshot").click()
            await expect(status_line(page)).to_have_text("Take snapshot clean: done.")
            snaps = page.locator("table[aria-label=Snapshots] tbody tr", has_text="clean")
            await expect(snaps).to_have_count(1)
            page.once("dialog", lambda d: d.accept())
            await page.get_by_role("button", name="Revert to clean").click()
            await expect(status_line(page)).to_have_text("Revert to clean: done.")
            page.once("dialog", lambda d: d.accept())
            await page.get_by_role("button", name="Delete snapshot clean").click()
            await expect(snaps).to_have_count(0)
            assert page.errors == []
    finally:
        await admin.acp(agent.full_jid, QUOTA_NS, "set", {"target": student["jid"], "vms": ""})
        iso.unlink(missing_ok=True)
