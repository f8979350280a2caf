// The entity pane: a VM page (state, live controls enabled by what the user
// holds) or a hypervisor page (status, alloc). Every error shows the agent's own text.
import { $, h } from "./dom.js";

const NS_VM = "archipel:vm:control";
const NS_HV = "archipel:hypervisor:control";
const NS_PERMS = "archipel:permissions";
// [button label, ACP action = the permission it needs]
const VM_CONTROLS = [["Start", "create"], ["Shutdown", "shutdown"], ["Destroy", "destroy"],
  ["Reboot", "reboot"], ["Suspend", "suspend"], ["Resume", "resume"]];

export function setupEntityView(session, roster) {
  const pane = $("#entity-pane");
  let current = null; // {item, held: Set|null, message, error}

  async function fetchHeld(state) {
    const to = roster.fullJid(state.item);
    const read = (q) => new Set([...q.getElementsByTagName("permission")].map((p) => p.getAttribute("name")));
    try {
      // effective=yes: rights through groups, roles and admin too; an agent without it
      // refuses the argument (-46), then the explicit grants are what can be known
      try {
        state.held = read(await session.acp(to, NS_PERMS, "getown", { effective: "yes" }));
      } catch (e) {
        if (e.code !== -46) throw e;
        state.held = read(await session.acp(to, NS_PERMS, "getown"));
      }
    } catch (e) {
      state.held = new Set();
      state.error = `Your permissions could not be read: ${e.message}`;
    }
    if (current === state) render();
  }

  function may(state, action) { return state.held && (state.held.has("all") || state.held.has(action)); }

  async function run(state, label, fn) {
    state.message = `${label}…`;
    state.error = "";
    render();
    try {
      await fn();
      state.message = `${label}: done.`;
    } catch (e) {
      state.message = "";
      state.error = `${label}: ${e.message}`;
    }
    if (current === state) render();
  }

  function render() {
    if (!current) { pane.replaceChildren(h("p", { class: "hint" }, "Choose an entity in the roster.")); return; }
    const { item } = current;
    const pr = roster.presence(item);
    const title = item.fullName || item.name || item.jid;
    const body = [h("h2", {}, title), h("p", { class: "jid" }, item.jid),
      h("p", {}, "State: ", h("strong", { class: "entity-state" }, pr.online ? pr.status || "Online" : "Offline"))];
    if (item.role === "virtualmachine") body.push(vmControls(current));
    else if (item.role === "hypervisor") body.push(hypervisorControls(current));
    body.push(h("p", { class: "message", role: "status" }, current.message || ""));
    body.push(h("p", { class: "error entity-error", role: "alert" }, current.error || ""));
    pane.replaceChildren(...body);
  }

  function vmControls(state) {
    const bar = h("div", { class: "controls", role: "group", "aria-label": "VM controls" });
    for (const [label, action] of VM_CONTROLS) {
      bar.append(h("button", { type: "button", dataset: { action }, disabled: !may(state, action),
        title: may(state, action) ? null : `You do not hold "${action}" on this VM`,
        onclick: () => run(state, label, () => session.acp(roster.fullJid(state.item), NS_VM, action, {}, "set")) },
      label));
    }
    return bar;
  }

  function hypervisorControls(state) {
    const input = h("input", { id: "alloc-name", type: "text", required: true, placeholder: "my-vm" });
    return h("form", { class: "card", onsubmit: (ev) => {
      ev.preventDefault();
      const name = input.value.trim();
      if (!name) return;
      run(state, `Allocate ${name}`, async () => {
        const q = await session.acp(roster.fullJid(state.item), NS_HV, "alloc", { name }, "set");
        const vm = q && q.firstElementChild ? q.firstElementChild.getAttribute("jid") : "";
        if (vm) state.allocated = vm;
      });
    } }, h("label", { for: "alloc-name" }, "New virtual machine name"), input, h("button", { type: "submit" }, "Allocate"));
  }

  roster.addEventListener("change", () => { if (current) render(); });
  return {
    show(item) {
      current = { item, held: null, message: "", error: "" };
      render();
      if (item.role === "virtualmachine") fetchHeld(current);
    },
    clear() { current = null; render(); },
  };
}
