"""The hypervisor page in Debian's chromium, as the rig's admin: node info,
storage health, VMs hosted (managed or not), clone with its progress bar, free
with a confirmation, manage/unmanage; permissions, quotas and audit log; a disk
conversion's progress on the VM page."""
from __future__ import annotations

import re

from playwright.async_api import expect

from vm_helpers import alloc, unique_name, vm_full, wait_vm_ready
from web_browser import add_contact, browser, contact, open_app, open_contact, screenshot, status_line, tab, user_page  # noqa: F401

DISK_NS = "archipel:vm:disk"

RECORD_PUSHES = """window.seen = [];
archipel.pushes.addEventListener('push', (e) => seen.push([e.detail.ns, e.detail.change,
  (e.detail.el.firstElementChild || {getAttribute: () => null}).getAttribute('progress')]));"""


async def test_admin_hypervisor_page_clone_free_manage_and_admin_views(browser, stack, agent, admin):  # noqa: F811
    source = unique_name("src")
    vm_jid = await alloc(admin, agent.full_jid, source)
    full = vm_full(vm_jid, agent.jid)
    await wait_vm_ready(admin, full)
    # apparent size 64 MiB (sparse): the clone's copy pushes its progress in steps
    await admin.acp(full, DISK_NS, "create", {"name": "data", "size": "64", "unit": "M", "format": "raw"})
    async with user_page(browser, stack) as page:
        await open_app(page, stack.admin_user)
        await add_contact(page, agent.jid)
        await expect(contact(page, agent.jid).locator(".status")).to_have_text(re.compile(r"^Online"))
        await open_contact(page, agent.jid)
        await expect(page.locator("#entity-pane .node-info")).to_have_text(re.compile(r"\d+ CPUs at \d+ MHz · \d+ MiB"))
        await expect(page.locator("#entity-pane .storage-health")).to_have_text(re.compile(r"^Storage /.*: ok"))
        vms = page.locator("table[aria-label='Virtual machines hosted']")
        row = vms.locator("tr", has_text=source)
        await expect(row).to_contain_text("yes")

        # clone: the copy's progress comes from the hypervisor's "cloning" pushes
        await page.evaluate(RECORD_PUSHES)
        await page.select_option("#clone-source", vm_jid)
        copy = unique_name("copy")
        await page.fill("#clone-name", copy)
        await page.get_by_role("button", name="Clone", exact=True).click()
        await expect(status_line(page)).to_have_text(re.compile(r"^Clone .*: done\.$"))
        await expect(page.get_by_role("group", name="Clone copy")).to_contain_text("Clone ready")
        steps = [int(p) for ns, change, p in await page.evaluate("seen") if change == "cloning"]
        assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] == 100
        copy_row = vms.locator("tr", has_text=copy)
        await expect(copy_row).to_have_count(1)
        await screenshot(page, "hypervisor")

        # free, after a confirmation (dismissed first: nothing happens)
        page.once("dialog", lambda d: d.dismiss())
        await copy_row.get_by_role("button", name=f"Free {copy}").click()
        await expect(copy_row).to_have_count(1)
        page.once("dialog", lambda d: d.accept())
        await copy_row.get_by_role("button", name=f"Free {copy}").click()
        await expect(status_line(page)).to_have_text(f"Free {copy}: done.")
        await expect(copy_row).to_have_count(0)

        # unmanage keeps the domain (listed as not managed), manage adopts it again
        page.once("dialog", lambda d: d.accept())
        await row.get_by_role("button", name=f"Unmanage {source}").click()
        await expect(row.locator("td").nth(2)).to_have_text("no")
        await row.get_by_role("button", name=f"Manage {source}").click()
        await expect(row.locator("td").nth(2)).to_have_text("yes")

        # admin views
        await tab(page, "Permissions").click()
        await expect(page.locator("table[aria-label='Permissions granted']")).to_be_visible()
        await tab(page, "Quotas").click()
        await expect(page.locator(".quota-mine")).to_contain_text("admin: unlimited")
        target = f"{unique_name('nobody')}@{stack.domain}"
        await page.get_by_label("User JID or LDAP group").fill(target)
        await page.get_by_label("VMs (none = unlimited)").fill("3")
        await page.get_by_role("button", name="Set quota").click()
        await expect(page.locator(".quota-shown")).to_have_text(f"user {target}: vms 3")
        await page.get_by_label("VMs (none = unlimited)").fill("x")
        await page.get_by_role("button", name="Set quota").click()
        await expect(page.locator("#entity-pane .entity-error")).to_have_text(re.compile(rf"^Quota of {re.escape(target)}: .*whole number"))
        await tab(page, "Audit").click()
        audit = page.locator("#entity-pane .panel-audit table[aria-label='Audit entries']")
        await expect(audit).to_contain_text("clone")

        # a disk conversion on the VM page shows the "progress" pushes of the disk
        await tab(page, "Virtual machines").click()
        await page.locator("button.link", has_text=source).click()
        await expect(page.locator("#entity-pane .entity-state")).to_have_text("Off")
        await tab(page, "Disks").click()
        await page.evaluate(RECORD_PUSHES)
        await page.get_by_role("button", name="Convert data.raw to qcow2").click()
        await expect(page.get_by_role("group", name="Disk operation")).to_contain_text("Converted data.raw")
        await expect(page.locator("table[aria-label=Disks]")).to_contain_text("data.qcow2")
        disk_steps = [p for ns, change, p in await page.evaluate("seen") if ns == "disk" and change == "progress"]
        assert disk_steps, "no progress push for a convert"
        # the admin holds "audit" on the hypervisor: this VM's own entries
        await tab(page, "Audit").click()
        vm_audit = page.locator("#entity-pane .panel-audit table[aria-label='Audit entries']")
        await expect(vm_audit).to_contain_text("archipel:vm:disk convert")
        await expect(vm_audit).not_to_contain_text("archipel:hypervisor:control clone")  # another entity's
        assert page.errors == []
    await admin.acp(agent.full_jid, "archipel:hypervisor:control", "free", {"jid": vm_jid})
