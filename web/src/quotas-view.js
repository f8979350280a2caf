// Quotas on a hypervisor: your usage, every owner's usage (quota_usage), and
// setting the limits of a user or LDAP group (quota_set).
import { h } from "./dom.js";
import { NS, table } from "./entity-context.js";

const UNIT = { vms: "", vcpus: "", memory: " KiB", disk: " B" };

function usageLine(u) {
  const parts = [...u.children].filter((c) => c.localName === "resource").map((r) => {
    const limit = r.getAttribute("limit");
    return `${r.getAttribute("name")} ${r.getAttribute("used")}${UNIT[r.getAttribute("name")] || ""}${limit ? ` of ${limit}` : ""}`;
  });
  return `${parts.join(", ")}${u.getAttribute("admin") === "yes" ? " (admin: unlimited)" : ""}`;
}

export function quotasSection(ctx, panel) {
  const mine = h("p", { class: "quota-mine" });
  const all = h("div", { class: "quota-all" });
  const f = {
    type: h("select", { id: "quota-type" }, ["user", "group"].map((t) => h("option", { value: t }, t))),
    target: h("input", { id: "quota-target", type: "text", required: true, placeholder: "student1@archipel.test or students" }),
    vms: h("input", { id: "quota-vms", type: "text", placeholder: "unchanged" }),
    vcpus: h("input", { id: "quota-vcpus", type: "text", placeholder: "unchanged" }),
    memory: h("input", { id: "quota-memory", type: "text", placeholder: "e.g. 4G" }),
    disk: h("input", { id: "quota-disk", type: "text", placeholder: "e.g. 50G" }),
  };
  const shown = h("p", { class: "quota-shown", role: "status" });
  const form = h("form", { class: "card quota-form", "aria-label": "Set a quota",
    onsubmit: async (ev) => {
      ev.preventDefault();
      const attrs = { target_type: f.type.value, target: f.target.value.trim() };
      for (const k of ["vms", "vcpus", "memory", "disk"]) if (f[k].value.trim()) attrs[k] = f[k].value.trim();
      const q = await ctx.run(`Quota of ${attrs.target}`, () => ctx.acp(NS.QUOTA, "set", attrs, "set"));
      if (q) { showQuota(q.firstElementChild); load(); }
    } },
  h("label", { for: "quota-type" }, "For a"), f.type,
  h("label", { for: "quota-target" }, "User JID or LDAP group"), f.target,
  h("label", { for: "quota-vms" }, "VMs (none = unlimited)"), f.vms,
  h("label", { for: "quota-vcpus" }, "vCPUs in all"), f.vcpus,
  h("label", { for: "quota-memory" }, "Memory in all"), f.memory,
  h("label", { for: "quota-disk" }, "Disk in all"), f.disk,
  h("div", { class: "row" },
    h("button", { type: "submit", disabled: !ctx.may("quota_set") }, "Set quota"),
    h("button", { type: "button", disabled: !ctx.may("quota_get"), onclick: async () => {
      const q = await ctx.run("Read quota", () => ctx.acp(NS.QUOTA, "get", { target_type: f.type.value, target: f.target.value.trim() }));
      if (q) showQuota(q.firstElementChild);
    } }, "Read quota")), shown);
  panel.append(h("h3", {}, "Your usage"), mine, all, form);

  function showQuota(q) {
    if (!q) return;
    const limits = ["vms", "vcpus", "memory", "disk"].filter((k) => q.getAttribute(k)).map((k) => `${k} ${q.getAttribute(k)}`);
    shown.textContent = `${q.getAttribute("target_type")} ${q.getAttribute("target")}: ${limits.join(", ") || "unlimited"}`;
  }

  async function load() {
    try {
      const u = (await ctx.items(NS.QUOTA, "usage"))[0];
      mine.textContent = u ? usageLine(u) : "";
    } catch (e) { mine.textContent = `Usage: ${e.message}`; }
    if (!ctx.may("quota_usage")) return;
    try {
      const rows = await ctx.items(NS.QUOTA, "usage", { all: "1" });
      all.replaceChildren(table("Usage of every VM owner", [["Owner", (u) => u.getAttribute("user")], ["Usage", usageLine]], rows,
        { "aria-label": "Usage of every owner" }));
    } catch (e) { all.replaceChildren(h("p", { class: "error" }, `Usage of all: ${e.message}`)); }
  }
  ctx.onPush(({ ns }) => { if (ns === "hypervisor") load(); });
  load();
}
