// The teacher/admin table: every VM of the roster with its state, owner,
// memory and last change, and bulk start/stop of the selected ones.
import { h } from "./dom.js";
import { NS, mib } from "./entity-context.js";

export function teacherTable(app, pane, { openVm }) {
  const { session, roster, pushes } = app;
  const info = new Map(); // bare jid -> {owner, memory, status (when read), error}
  const results = new Map(); // bare jid -> text of the last bulk action
  const selected = new Set();
  const body = h("tbody", {});
  const all = h("input", { type: "checkbox", "aria-label": "Select every VM", onchange: () => {
    for (const vm of vms()) { if (all.checked) selected.add(vm.jid); else selected.delete(vm.jid); }
    render();
  } });
  const status = h("p", { class: "message", role: "status" });
  const bar = h("div", { class: "controls", role: "group", "aria-label": "Bulk actions" },
    h("button", { type: "button", id: "bulk-start", onclick: () => bulk("create", "Power on") }, "Power on selected"),
    h("button", { type: "button", id: "bulk-shutdown", onclick: () => bulk("shutdown", "Shut down") }, "Shut down selected"),
    h("button", { type: "button", id: "bulk-destroy", onclick: () => bulk("destroy", "Power off") }, "Power off selected"));
  pane.replaceChildren(h("h2", {}, "Virtual machines you can reach"), bar, status,
    h("div", { class: "scroll" }, h("table", { class: "grid teacher-table", "aria-label": "Virtual machines" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, all), ...["Name", "State", "Owner", "Memory", "Last change", "Result"]
        .map((t) => h("th", { scope: "col" }, t)))), body)));

  function vms() {
    return [...roster.items.values()].filter((it) => it.role === "virtualmachine")
      .sort((a, b) => (a.name || a.jid).localeCompare(b.name || b.jid));
  }

  async function fetchInfo(item) {
    const pr = roster.presence(item);
    const known = info.get(item.jid);
    if (!pr.online || (known && known.status === pr.status)) return;
    info.set(item.jid, { ...(known || {}), status: pr.status });
    try {
      const q = await session.acp(roster.fullJid(item), NS.VM, "info");
      const el = q && q.firstElementChild;
      info.set(item.jid, { status: pr.status, owner: el.getAttribute("owner") || "", memory: el.getAttribute("memory") });
    } catch (e) {
      info.set(item.jid, { status: pr.status, error: e.message });
    }
    render();
  }

  function render() {
    const rows = vms();
    body.replaceChildren(...rows.map((item) => {
      const pr = roster.presence(item);
      const i = info.get(item.jid) || {};
      const name = item.fullName || item.name || item.jid;
      const box = h("input", { type: "checkbox", checked: selected.has(item.jid), "aria-label": `Select ${name}`,
        onchange: (ev) => { if (ev.target.checked) selected.add(item.jid); else selected.delete(item.jid); } });
      return h("tr", { dataset: { jid: item.jid } },
        h("td", {}, box),
        h("td", {}, h("button", { type: "button", class: "link", onclick: () => openVm(item.jid) }, name)),
        h("td", { class: "state" }, pr.online ? pr.status || "Online" : "Offline"),
        h("td", { class: "owner" }, i.error ? "" : i.owner || ""),
        h("td", { class: "memory" }, i.memory ? mib(i.memory) : ""),
        h("td", { class: "changed" }, item.changedAt ? item.changedAt.toLocaleTimeString() : ""),
        h("td", { class: "result" }, results.get(item.jid) || i.error || ""));
    }));
    if (!rows.length) body.append(h("tr", {}, h("td", { colspan: "7", class: "hint" }, "No virtual machines in your roster.")));
    for (const item of rows) fetchInfo(item);
  }

  async function bulk(action, label) {
    const chosen = vms().filter((it) => selected.has(it.jid));
    if (!chosen.length) { status.textContent = "Select VMs first."; return; }
    status.textContent = `${label}: ${chosen.length} VM(s)…`;
    await Promise.all(chosen.map(async (item) => {
      try {
        await session.acp(roster.fullJid(item), NS.VM, action, {}, "set");
        results.set(item.jid, `${label}: done`);
      } catch (e) {
        results.set(item.jid, `${label}: ${e.message}`); // the agent's own text
      }
    }));
    status.textContent = `${label}: ${chosen.filter((it) => (results.get(it.jid) || "").endsWith("done")).length} of ${chosen.length} done.`;
    render();
  }

  let pending = false;
  const onChange = () => { // one drawing per frame, however many presences arrived
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  };
  roster.addEventListener("change", onChange);
  const onPush = ({ detail }) => {
    const item = roster.items.get(detail.entity);
    if (item && item.role === "virtualmachine") {
      item.changedAt = new Date();
      if (detail.ns === "virtualmachine:control" || detail.ns === "virtualmachine:definition") {
        const i = info.get(item.jid);
        if (i) i.status = null; // read again
      }
      render();
    }
  };
  pushes.addEventListener("push", onPush);
  render();
  return { close() { roster.removeEventListener("change", onChange); pushes.removeEventListener("push", onPush); } };
}
