#!/usr/bin/env python3
"""The browser client with 100 VMs, in Debian's chromium, against floors from the same run.

(a) login → roster complete: from pressing Enter on the login form until the
    page lists every VM with its presence status (roster, vCards, presences),
    against the login alone (until "Connected") and an XMPP ping from the page;
(b) a state change made in libvirt (``create()``/``destroy()`` called directly,
    not through the agent; timed from the call's return) → the roster row shows
    ``Running``/``Off``, timed in
    the page (MutationObserver, wall clock shared with this process), against an
    XMPP ping from the page to the VM in the same run.

The user is the rig's admin: the agent makes the requester of an alloc a
subscribed contact of the new VM (its client accepts), so its roster holds the
VMs.  Ratios are printed; there are no thresholds.

    ARCHIPEL_RIG_PROFILE=dev2 .venv/bin/python bench/bench_web.py [--vms 100] [--logins 5] [--changes 20]
"""
from __future__ import annotations

import argparse
import asyncio
import time

import libvirt

from common import describe, running_agent
from bench_vms import PresenceClock, alloc_many
from web_browser import CHROMIUM, CHROMIUM_ARGS, DOMAIN

PINGS = """async ([to, n]) => {
  const out = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await archipel.session.ping(to);
    out.push((performance.now() - t0) / 1000);
  }
  return out; }"""

WATCH = """(jid) => {
  window.changes = [];
  const seen = () => {
    const el = document.querySelector(`li.contact[data-jid="${jid}"] .status`);
    return el ? el.textContent : null;
  };
  let last = seen();
  new MutationObserver(() => {
    const now = seen();
    if (now !== last) { last = now; changes.push([now, (performance.timeOrigin + performance.now()) / 1000]); }
  }).observe(document.querySelector('#roster-groups'), {subtree: true, childList: true, characterData: true});
}"""


async def roster_complete(page, n: int) -> None:
    await page.wait_for_function(
        """(n) => archipel.roster.loaded && [...document.querySelectorAll('section.group[data-role=virtualmachine] li.contact .status')]
             .filter((s) => s.textContent === 'Off').length >= n""", arg=n, polling="raf", timeout=300000)


async def main(vms: int, logins: int, changes: int) -> None:
    from playwright.async_api import async_playwright
    async with running_agent() as (stack, agent, admin):
        clock = PresenceClock(admin)
        t0 = time.monotonic()
        jids = await alloc_many(admin, agent.full_jid, vms, "web")
        await clock.wait_online(set(jids), t0, 600)
        user = stack.admin_user
        pw = await async_playwright().start()
        browser = await pw.chromium.launch(executable_path=CHROMIUM,
                                           args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1"])
        try:
            page = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
            login_s, complete_s = [], []
            for _ in range(logins):
                await page.goto(stack.web_url)
                await page.fill("#login-jid", user["jid"])
                await page.fill("#login-password", user["password"])
                t = time.perf_counter()
                await page.press("#login-password", "Enter")
                await page.wait_for_function("archipel.session.state === 'online'", polling="raf")
                login_s.append(time.perf_counter() - t)
                await roster_complete(page, vms)
                complete_s.append(time.perf_counter() - t)
            # one VM's state changes, made in libvirt itself
            target = jids[0]
            uuid = target.split("@")[0]
            full = f"{target}/{agent.jid.split('@')[0]}"
            await page.evaluate(WATCH, target)
            conn = libvirt.open(stack.libvirt_uri)
            dom = conn.lookupByUUIDString(uuid)
            latencies = []
            try:
                for i in range(changes * 2):
                    want = "Running" if i % 2 == 0 else "Off"
                    count = await page.evaluate("changes.length")
                    (dom.create if want == "Running" else dom.destroy)()
                    t = time.time()  # libvirt says it is done: the state has changed
                    await page.wait_for_function("([c, want]) => changes.slice(c).some(([s]) => s === want)",
                                                 arg=[count, want], polling="raf", timeout=60000)
                    shown = next(ts for s, ts in (await page.evaluate("changes"))[count:] if s == want)
                    latencies.append(shown - t)
            finally:
                if dom.isActive():
                    dom.destroy()
                conn.close()
            vm_pings, server_pings = [], []
            for _ in range(max(20, changes)):  # interleaved: the same conditions for both
                vm_pings += await page.evaluate(PINGS, [full, 5])
                server_pings += await page.evaluate(PINGS, [stack.domain, 5])
        finally:
            await browser.close()
            await pw.stop()
    print(f"== (a) login → roster complete with {vms} VMs, {logins} logins")
    lg = describe("login (until connected)", login_s)
    rc = describe("login → roster complete", complete_s)
    print(f"roster complete / login (median)   {rc['median_ms'] / lg['median_ms']:.2f}")
    print(f"\n== (b) libvirt state change → roster row, {len(latencies)} changes")
    st = describe("libvirt change → page", latencies)
    sp = describe("xmpp ping server (page)", server_pings)
    vp = describe("xmpp ping VM (page)", vm_pings)
    print(f"change→page / ping VM (median)     {st['median_ms'] / vp['median_ms']:.2f}")
    print(f"change→page / ping VM (p99)        {st['p99_ms'] / vp['p99_ms']:.2f}")
    print(f"roster complete / ping VM (median) {rc['median_ms'] / vp['median_ms']:.1f}")
    del sp


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--logins", type=int, default=5)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.vms, args.logins, args.changes))
