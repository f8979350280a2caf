// The VM page: state and live controls (enabled by what the user holds), then
// tabs for the definition, disks, snapshots, permissions, chat, audit and console.
import { h } from "./dom.js";
import { NS, fact, mib } from "./entity-context.js";
import { tabs } from "./tabs.js";
import { ProgressBar, migrationPercent } from "./progress.js";
import { definitionSection } from "./vm-definition.js";
import { disksSection } from "./vm-disks.js";
import { snapshotsSection } from "./vm-snapshots.js";
import { permissionsSection } from "./permissions-editor.js";
import { chatSection } from "./chat-view.js";
import { auditSection } from "./audit-view.js";
import { mountConsole } from "./console-slot.js";

// [button label, ACP action = the permission it needs]
export const VM_CONTROLS = [["Start", "create"], ["Shutdown", "shutdown"], ["Destroy", "destroy"],
  ["Reboot", "reboot"], ["Suspend", "suspend"], ["Resume", "resume"]];

export function vmPage(ctx, pane) {
  const title = h("h2", {});
  const state = h("strong", { class: "entity-state" });
  const info = h("p", { class: "vm-info" });
  const migration = new ProgressBar("Migration");
  const buttons = VM_CONTROLS.map(([label, action]) => h("button", {
    type: "button", dataset: { action }, disabled: true,
    onclick: () => ctx.run(label, () => ctx.acp(NS.VM, action, {}, "set")),
  }, label));
  const controls = h("div", { class: "controls", role: "group", "aria-label": "VM controls" }, buttons);
  let infoStatus = null;
  let shownFirst = false; // the first tab is chosen once; later updates keep the user's tab

  const consoleSlot = h("section", { id: "console", "aria-label": "Console", dataset: { jid: ctx.jid } });
  const t = tabs("VM sections", [
    { id: "definition", title: "Definition", build: (p) => definitionSection(ctx, p) },
    { id: "disks", title: "Disks", build: (p) => disksSection(ctx, p) },
    { id: "snapshots", title: "Snapshots", build: (p) => snapshotsSection(ctx, p) },
    { id: "permissions", title: "Permissions", build: (p) => permissionsSection(ctx, p) },
    { id: "chat", title: "Chat", build: (p) => chatSection(ctx, p) },
    { id: "audit", title: "Audit", build: (p) => auditSection(ctx, p, { entity: ctx.jid }) },
    { id: "console", title: "Console", build: (p) => {
      p.append(consoleSlot);
      const cleanup = mountConsole(consoleSlot, ctx);
      if (typeof cleanup === "function") ctx.onClose(cleanup);
    } },
  ]);

  pane.replaceChildren(title, h("p", { class: "jid" }, ctx.jid), h("p", {}, "State: ", state), info,
    migration.el, controls, ctx.message, ctx.error, t.el);

  async function fetchInfo() {
    infoStatus = ctx.presence().status;
    try {
      const el = (await ctx.items(NS.VM, "info"))[0];
      if (!el) return;
      ctx.info = el;
      info.textContent = `Memory: ${mib(el.getAttribute("memory"))} · vCPUs: ${el.getAttribute("nrVirtCpu")} · ` +
        `Autostart: ${el.getAttribute("autostart") === "1" ? "yes" : "no"}`;
    } catch (e) {
      info.textContent = `Details unavailable: ${e.message}`;
    }
  }

  function render() {
    const pr = ctx.presence();
    title.textContent = ctx.item.fullName || ctx.item.name || ctx.jid;
    state.textContent = pr.online ? pr.status || "Online" : "Offline";
    const pct = migrationPercent(pr.status);
    if (pct !== null) migration.set("Migrating", pct);
    else if (!migration.el.hidden && migration.el.dataset.percent !== "100") migration.done("Migration ended");
    for (const b of buttons) {
      const ok = ctx.may(b.dataset.action);
      b.disabled = !ok;
      b.title = ok ? "" : `You do not hold "${b.dataset.action}" on this VM`;
    }
    t.show("definition", ctx.may("xmldesc") || ctx.may("memory") || ctx.may("define"));
    t.show("disks", ctx.may("drives_get"));
    t.show("snapshots", ctx.may("snapshot_get"));
    t.show("permissions", ctx.may("permission_get") || ctx.may("permission_set"));
    t.show("chat", true);
    t.show("audit", true); // the hypervisor decides (permission "audit"); its refusal is shown
    t.show("console", true);
  }

  async function loadHeld() {
    await ctx.fetchHeld();
    if (ctx.heldError) ctx.error.textContent = ctx.heldError;
    else if (ctx.error.textContent.startsWith("Your permissions")) ctx.error.textContent = "";
    if (ctx.may("info")) await fetchInfo();
    render();
    if (!shownFirst) { shownFirst = true; t.first(); }
  }

  ctx.onRoster(() => {
    const pr = ctx.presence();
    if (ctx.heldError && pr.online) loadHeld();
    else if (ctx.info !== undefined && pr.status !== infoStatus && ctx.may("info")) fetchInfo();
    render();
  });
  ctx.onPush(({ ns, change }) => {
    if (ns === "permissions") loadHeld(); // a group or role change may concern this user too
    else if ((ns === "virtualmachine:control" && (change === "memory" || change === "nvcpu")) ||
             (ns === "virtualmachine:definition") || (ns === "snapshoting" && change === "restored")) {
      if (ctx.may("info")) fetchInfo();
    }
  });
  render();
  loadHeld();
}
