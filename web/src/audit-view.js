// The audit log (archipel:audit on the hypervisor, permission "audit"),
// optionally of one entity; the hypervisor's refusal is shown as it is.
import { h } from "./dom.js";
import { NS, table } from "./entity-context.js";

export function auditSection(ctx, panel, { entity = null, hypervisor = null } = {}) {
  const list = h("div", { class: "audit-list" });
  const refresh = h("button", { type: "button", onclick: () => load() }, "Refresh audit");
  panel.append(h("div", { class: "row" }, refresh), list);

  function hypervisorJid() {
    if (hypervisor) return hypervisor();
    // a VM's hypervisor: the info reply names it; else the VM's own domain and resource
    const hv = ctx.info && ctx.info.getAttribute("hypervisor");
    return hv || null;
  }

  async function load() {
    const to = hypervisorJid();
    if (!to) { list.replaceChildren(h("p", { class: "hint" }, "The hypervisor of this VM is not known (no info).")); return; }
    const attrs = { limit: "50" };
    if (entity) attrs.entity = entity;
    try {
      const q = await ctx.session.acp(to, NS.AUDIT, "get", attrs);
      const entries = q ? [...q.children] : [];
      list.replaceChildren(table(entity ? "Audit of this VM" : "Audit log", [
        ["Date", (e) => (e.getAttribute("date") || "").slice(0, 19).replace("T", " ")],
        ["Who", (e) => e.getAttribute("sender")],
        ...(entity ? [] : [["Entity", (e) => e.getAttribute("entity")]]),
        ["What", (e) => `${e.getAttribute("namespace")} ${e.getAttribute("action")}`.trim()],
        ["Arguments", (e) => [...e.children].map((a) => `${a.getAttribute("name")}=${a.getAttribute("value")}`).join(" ")],
        ["Outcome", (e) => e.getAttribute("outcome")],
      ], entries, { "aria-label": "Audit entries" }));
    } catch (e) {
      list.replaceChildren(h("p", { class: "error", role: "alert" }, `Audit: ${e.message}`));
    }
  }
  load();
}
