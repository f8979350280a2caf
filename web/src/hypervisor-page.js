// The hypervisor page: node info and storage health, the VMs it hosts
// (managed or not) with alloc, clone, free, manage/unmanage, and for an
// admin the permissions, quotas and audit log.
import { h } from "./dom.js";
import { NS, mib, bytes, table } from "./entity-context.js";
import { tabs } from "./tabs.js";
import { ProgressBar } from "./progress.js";
import { permissionsSection } from "./permissions-editor.js";
import { quotasSection } from "./quotas-view.js";
import { auditSection } from "./audit-view.js";
import { configureNewVm } from "./vm-alloc.js";

export function hypervisorPage(ctx, pane, { openVm }) {
  const title = h("h2", {});
  const state = h("strong", { class: "entity-state" });
  const node = h("p", { class: "node-info" });
  const storage = h("p", { class: "storage-health", dataset: { state: "" } });
  const t = tabs("Hypervisor sections", [
    { id: "vms", title: "Virtual machines", build: (p) => vmsSection(ctx, p, openVm) },
    { id: "permissions", title: "Permissions", build: (p) => permissionsSection(ctx, p, {
      roles: () => ctx.items(NS.PERMS, "roles") }) },
    { id: "quotas", title: "Quotas", build: (p) => quotasSection(ctx, p) },
    { id: "audit", title: "Audit", build: (p) => auditSection(ctx, p, { hypervisor: () => ctx.to() }) },
  ]);
  pane.replaceChildren(title, h("p", { class: "jid" }, ctx.jid), h("p", {}, "State: ", state), node, storage,
    ctx.message, ctx.error, t.el);
  t.select("vms");

  function render() {
    const pr = ctx.presence();
    title.textContent = ctx.item.fullName || ctx.item.name || ctx.jid;
    state.textContent = pr.online ? pr.status || "Online" : "Offline";
    t.show("permissions", ctx.may("permission_get") || ctx.may("permission_set"));
    t.show("quotas", true); // everyone may read their own usage
    t.show("audit", ctx.may("audit"));
  }

  async function loadNode() {
    try {
      const n = (await ctx.items(NS.HV, "nodeinfo"))[0];
      if (n) node.textContent = `${n.getAttribute("model")} · ${n.getAttribute("nrCPU")} CPUs at ${n.getAttribute("mHzCPU")} MHz · ${mib(n.getAttribute("memory"))}`;
    } catch (e) { node.textContent = `Node info: ${e.message}`; }
  }

  async function loadStorage() {
    try {
      const s = (await ctx.items(NS.HEALTH, "storage"))[0];
      if (!s) return;
      const reasons = [...s.children].map((r) => r.textContent).join(", ");
      const free = s.getAttribute("free_bytes") && s.getAttribute("total_bytes")
        ? `; ${bytes(s.getAttribute("free_bytes"))} free of ${bytes(s.getAttribute("total_bytes"))}` : "";
      storage.textContent = `Storage ${s.getAttribute("path")}: ${s.getAttribute("state")}${reasons ? ` (${reasons})` : ""}${free}`;
      storage.dataset.state = s.getAttribute("state");
    } catch (e) { storage.textContent = `Storage health: ${e.message}`; }
  }

  async function loadHeld() {
    await ctx.fetchHeld();
    render();
    if (ctx.may("nodeinfo")) loadNode();
    if (ctx.may("health_info")) loadStorage();
  }
  ctx.onRoster(render);
  ctx.onPush(({ ns }) => {
    if (ns === "hypervisor:storage") loadStorage();
    else if (ns === "permissions") loadHeld();
  });
  render();
  loadHeld();
}

function vmsSection(ctx, panel, openVm) {
  const list = h("div", { class: "vm-list" });
  const progress = new ProgressBar("Clone copy");
  const name = h("input", { id: "alloc-name", type: "text", required: true, placeholder: "my-vm" });
  const memory = h("input", { id: "alloc-memory", type: "number", min: "16", step: "1", placeholder: "default" });
  const vcpus = h("input", { id: "alloc-vcpus", type: "number", min: "1", step: "1", placeholder: "default" });
  const allocForm = h("form", { class: "card alloc-form", "aria-label": "Allocate a virtual machine",
    onsubmit: (ev) => {
      ev.preventDefault();
      const n = name.value.trim();
      if (!n) return;
      ctx.run(`Allocate ${n}`, async () => {
        const vm = (await ctx.items(NS.HV, "alloc", { name: n }, "set"))[0];
        if (memory.value || vcpus.value) {
          await configureNewVm(ctx, vm.getAttribute("jid"), { memoryMiB: Number(memory.value) || null, vcpus: Number(vcpus.value) || null });
        }
        name.value = ""; memory.value = ""; vcpus.value = "";
      });
    } },
  h("label", { for: "alloc-name" }, "New virtual machine name"), name,
  h("div", { class: "row" },
    h("span", {}, h("label", { for: "alloc-memory" }, "Memory (MiB, optional)"), memory),
    h("span", {}, h("label", { for: "alloc-vcpus" }, "vCPUs (optional)"), vcpus)),
  h("button", { type: "submit" }, "Allocate"));
  const source = h("select", { id: "clone-source" });
  const cloneName = h("input", { id: "clone-name", type: "text", placeholder: "copy name (optional)" });
  const cloneForm = h("form", { class: "card clone-form", "aria-label": "Clone a virtual machine",
    onsubmit: (ev) => {
      ev.preventDefault();
      const attrs = { jid: source.value };
      if (cloneName.value.trim()) attrs.name = cloneName.value.trim();
      ctx.run(`Clone ${source.selectedOptions[0] ? source.selectedOptions[0].textContent : ""}`,
        () => ctx.acp(NS.HV, "clone", attrs, "set"));
    } },
  h("label", { for: "clone-source" }, "Clone (the source must be off)"), source,
  h("label", { for: "clone-name" }, "Name of the copy"), cloneName, h("button", { type: "submit" }, "Clone"));
  panel.append(allocForm, progress.el, list, cloneForm);

  async function load() {
    if (!ctx.may("rostervm")) { list.replaceChildren(); cloneForm.hidden = !ctx.may("clone"); return; }
    try {
      const items = await ctx.items(NS.HV, "rostervm");
      const managed = items.filter((i) => i.getAttribute("managed") === "True");
      source.replaceChildren(...managed.map((i) => h("option", { value: i.textContent.split("/")[0] }, i.getAttribute("name"))));
      cloneForm.hidden = !ctx.may("clone") || !managed.length;
      list.replaceChildren(table("Virtual machines hosted", [
        ["Name", (i) => {
          const bare = i.textContent.split("/")[0];
          return ctx.roster.items.has(bare) ? h("button", { type: "button", class: "link", onclick: () => openVm(bare) }, i.getAttribute("name"))
            : i.getAttribute("name");
        }],
        ["JID", (i) => i.textContent.split("/")[0]],
        ["Managed", (i) => (i.getAttribute("managed") === "True" ? "yes" : "no")],
        ["Actions", (i) => rowActions(i)],
      ], items, { "aria-label": "Virtual machines hosted" }));
    } catch (e) { ctx.fail("Virtual machines", e); }
  }

  function item(jid) {
    const el = document.implementation.createDocument(null, "item").documentElement;
    el.setAttribute("jid", jid);
    return el;
  }

  function rowActions(i) {
    const bare = i.textContent.split("/")[0];
    const n = i.getAttribute("name");
    if (i.getAttribute("managed") !== "True") {
      return h("button", { type: "button", "aria-label": `Manage ${n}`, disabled: !ctx.may("manage"),
        onclick: () => ctx.run(`Manage ${n}`, () => ctx.acp(NS.HV, "manage", {}, "set", [item(bare)])) }, "Manage");
    }
    return h("div", { class: "row actions" },
      h("button", { type: "button", "aria-label": `Unmanage ${n}`, disabled: !ctx.may("unmanage"), onclick: () => {
        if (confirm(`Stop managing ${n}? Its domain and files are kept.`)) ctx.run(`Unmanage ${n}`, () => ctx.acp(NS.HV, "unmanage", {}, "set", [item(bare)]));
      } }, "Unmanage"),
      h("button", { type: "button", class: "danger", "aria-label": `Free ${n}`, disabled: !ctx.may("free"), onclick: () => {
        if (confirm(`Free ${n}? The VM, its disks and its account are deleted.`)) ctx.run(`Free ${n}`, () => ctx.acp(NS.HV, "free", { jid: bare }, "set"));
      } }, "Free"));
  }

  ctx.onPush(({ ns, change, el }) => {
    if (ns !== "hypervisor") return;
    const vm = el.firstElementChild;
    if (change === "cloning" && vm) progress.set(`Copying the disks of ${vm.getAttribute("jid")}`, Number(vm.getAttribute("progress")));
    else {
      if (change === "clone") progress.done("Clone ready");
      load();
    }
  });
  ctx.ready.then(load);
}
