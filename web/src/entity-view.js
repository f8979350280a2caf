// The entity pane: a VM page (state, live controls enabled by what the user
// holds) or a hypervisor page (status, alloc). Every error shows the agent's own text.
import { $, h } from "./dom.js";
import { mountConsole } from "./console-view.js";

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
    // effective=yes: rights through groups, roles and admin rights too. An older
    // agent ignores the argument and answers the explicit grants only.
    state.heldFailed = false;
    try {
      const q = await session.acp(roster.fullJid(state.item), NS_PERMS, "getown", { effective: "yes" });
      state.held = new Set([...q.getElementsByTagName("permission")].map((p) => p.getAttribute("name")));
      if (state.error.startsWith("Your permissions")) state.error = "";
      if (may(state, "info")) fetchInfo(state);
    } catch (e) {
      state.held = new Set();
      state.heldFailed = true; // asked again once the entity is online
      state.error = `Your permissions could not be read: ${e.message}`;
    }
    if (current === state) render();
  }

  // memory, vCPUs, autostart: asked again whenever the VM's presence status changes
  async function fetchInfo(state) {
    state.infoStatus = roster.presence(state.item).status;
    try {
      const q = await session.acp(roster.fullJid(state.item), NS_VM, "info");
      const info = q && q.firstElementChild;
      if (!info) return;
      const mib = Math.round(Number(info.getAttribute("memory")) / 1024);
      state.info = `Memory: ${mib} MiB · vCPUs: ${info.getAttribute("nrVirtCpu")} · ` +
        `Autostart: ${info.getAttribute("autostart") === "1" ? "yes" : "no"}`;
    } catch (e) {
      state.info = `Details unavailable: ${e.message}`;
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

  // Built once per selection, then updated in place: presence changes never
  // take the focus or a half-typed value away.
  function render() {
    if (!current) { pane.replaceChildren(h("p", { class: "hint" }, "Choose an entity in the roster.")); return; }
    const state = current;
    const { item } = state;
    if (!state.dom) {
      state.dom = {
        title: h("h2", {}),
        state: h("strong", { class: "entity-state" }),
        info: h("p", { class: "vm-info" }),
        message: h("p", { class: "message", role: "status" }),
        error: h("p", { class: "error entity-error", role: "alert" }),
        buttons: [],
      };
      const body = [state.dom.title, h("p", { class: "jid" }, item.jid), h("p", {}, "State: ", state.dom.state)];
      if (item.role === "virtualmachine") body.push(state.dom.info, vmControls(state));
      else if (item.role === "hypervisor") body.push(hypervisorControls(state));
      body.push(state.dom.message, state.dom.error);
      if (item.role === "virtualmachine") body.push(mountConsole(session, () => roster.fullJid(state.item)));
      pane.replaceChildren(...body);
    }
    const pr = roster.presence(item);
    state.dom.title.textContent = item.fullName || item.name || item.jid;
    state.dom.state.textContent = pr.online ? pr.status || "Online" : "Offline";
    state.dom.info.textContent = state.info || "";
    state.dom.message.textContent = state.message || "";
    state.dom.error.textContent = state.error || "";
    for (const [button, action] of state.dom.buttons) {
      button.disabled = !may(state, action);
      button.title = may(state, action) ? "" : `You do not hold "${action}" on this VM`;
    }
  }

  function vmControls(state) {
    const bar = h("div", { class: "controls", role: "group", "aria-label": "VM controls" });
    for (const [label, action] of VM_CONTROLS) {
      const button = h("button", { type: "button", dataset: { action }, disabled: true,
        onclick: () => run(state, label, () => session.acp(roster.fullJid(state.item), NS_VM, action, {}, "set")) },
      label);
      state.dom.buttons.push([button, action]);
      bar.append(button);
    }
    return bar;
  }

  function hypervisorControls(state) {
    const input = h("input", { id: "alloc-name", type: "text", required: true, placeholder: "my-vm" });
    return h("form", { class: "card", onsubmit: (ev) => {
      ev.preventDefault();
      const name = input.value.trim();
      if (!name) return;
      run(state, `Allocate ${name}`, () => session.acp(roster.fullJid(state.item), NS_HV, "alloc", { name }, "set"));
    } }, h("label", { for: "alloc-name" }, "New virtual machine name"), input, h("button", { type: "submit" }, "Allocate"));
  }

  roster.addEventListener("change", () => {
    if (!current) return;
    if (current.heldFailed && roster.presence(current.item).online) fetchHeld(current);
    else if (current.info && roster.presence(current.item).status !== current.infoStatus && may(current, "info")) {
      fetchInfo(current);
    }
    render();
  });
  return {
    show(item) {
      current = { item, held: null, message: "", error: "" };
      render();
      if (item.role === "virtualmachine") fetchHeld(current);
    },
    clear() { current = null; render(); },
  };
}
