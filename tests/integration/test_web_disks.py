"""The Disks tab in Debian's chromium: a golden copy with its progress from the
pushes, a qcow2 overlay of it, resize (and the agent's refusal of a bad size),
delete after a confirmation."""
from __future__ import annotations

import re

from playwright.async_api import expect

from agent_fixtures import grant
from vm_helpers import alloc, unique_name, vm_full, wait_vm_ready
from web_browser import add_contact, browser, contact, error_line, open_app, open_contact, status_line, tab, user_page  # noqa: F401

DISK_NS = "archipel:vm:disk"


async def test_golden_copy_overlay_resize_and_delete(browser, stack, agent, admin):  # noqa: F811
    user = stack.user("student2")
    vm_jid = await alloc(admin, agent.full_jid, unique_name("disks"))
    vm = vm_full(vm_jid, agent.jid)
    await wait_vm_ready(admin, vm)
    await admin.acp(vm, DISK_NS, "create", {"name": "base", "size": "64", "unit": "M"})
    await grant(admin, vm, user["jid"], "presence", "all")
    golden = unique_name("tpl")
    golden_file = stack.storage_dir.parent / "golden" / f"{golden}.qcow2"
    try:
        async with user_page(browser, stack) as page:
            await open_app(page, user)
            await add_contact(page, vm_jid)
            await expect(contact(page, vm_jid).locator(".status")).to_have_text("Off")
            await open_contact(page, vm_jid)
            await tab(page, "Disks").click()
            disks = page.locator("table[aria-label=Disks]")
            await expect(disks).to_contain_text("base.qcow2")

            # a golden copy: progress from the pushes, then offered for overlays
            await page.get_by_label("Copy a disk of this VM (off) to the golden images").select_option("base.qcow2")
            await page.get_by_label("Golden image name").fill(golden)
            await page.get_by_role("button", name="Make golden image").click()
            await expect(status_line(page)).to_have_text("Golden copy of base.qcow2: done.")
            await expect(page.get_by_role("group", name="Disk operation")).to_have_text(
                re.compile("Golden copy made of base.qcow2"))
            assert golden_file.is_file()

            # an overlay of it
            await page.get_by_label("Disk name").fill("child")
            await page.get_by_label("Overlay of a golden image").select_option(f"{golden}.qcow2")
            await page.get_by_role("button", name="Create disk").click()
            await expect(status_line(page)).to_have_text("Create disk child: done.")
            child = disks.locator("tr", has_text="child.qcow2")
            await expect(child).to_contain_text(f"{golden}.qcow2")  # its backing file
            await expect(child).to_contain_text("64.0 MiB")

            # resize: a bad size is refused by the agent with its text, a good one shows
            await page.get_by_label("New size of child.qcow2").fill("lots")
            await page.get_by_role("button", name="Resize child.qcow2").click()
            await expect(error_line(page)).to_have_text(re.compile(r"^Resize child\.qcow2: .+"))
            await page.get_by_label("New size of child.qcow2").fill("128M")
            await page.get_by_role("button", name="Resize child.qcow2").click()
            await expect(status_line(page)).to_have_text("Resize child.qcow2: done.")
            await expect(child).to_contain_text("128.0 MiB")

            # delete, after a confirmation (dismissed first: nothing happens)
            page.once("dialog", lambda d: d.dismiss())
            await page.get_by_role("button", name="Delete child.qcow2").click()
            await expect(child).to_have_count(1)
            page.once("dialog", lambda d: d.accept())
            await page.get_by_role("button", name="Delete child.qcow2").click()
            await expect(status_line(page)).to_have_text("Delete child.qcow2: done.")
            await expect(child).to_have_count(0)
            assert page.errors == []
    finally:
        golden_file.unlink(missing_ok=True)
        await admin.acp(agent.full_jid, "archipel:hypervisor:control", "free", {"jid": vm_jid})
