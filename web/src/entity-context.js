// What every section of an entity page shares: where to send requests, what
// the user holds there (getown effective=yes), the page's status line, and
// push listeners that end with the page.
import { h } from "./dom.js";

export const NS = {
  VM: "archipel:vm:control",
  DEF: "archipel:vm:definition",
  HV: "archipel:hypervisor:control",
  PERMS: "archipel:permissions",
  DISK: "archipel:vm:disk",
  SNAP: "archipel:virtualmachine:snapshoting",
  QUOTA: "archipel:quota",
  AUDIT: "archipel:audit",
  HEALTH: "archipel:hypervisor:health",
  NET: "archipel:hypervisor:network",
};

export class EntityContext {
  constructor(app, item) {
    this.app = app; // {session, roster, pushes}
    this.item = item;
    this.held = null; // Set of permission names, null until known
    this.heldError = "";
    this._stops = [];
    this.ready = new Promise((resolve) => { this._ready = resolve; }); // the first fetchHeld is over
    this.message = h("p", { class: "message", role: "status" });
    this.error = h("p", { class: "error entity-error", role: "alert" });
  }

  get session() { return this.app.session; }
  get roster() { return this.app.roster; }
  get jid() { return this.item.jid; }
  to() { return this.roster.fullJid(this.item); }
  presence() { return this.roster.presence(this.item); }

  acp(ns, action, attrs = {}, type = "get", children = []) {
    return this.session.acp(this.to(), ns, action, attrs, type, children);
  }
  items(ns, action, attrs = {}, type = "get", children = []) {
    return this.session.acpItems(this.to(), ns, action, attrs, type, children);
  }

  may(action) { return Boolean(this.held && (this.held.has("all") || this.held.has(action))); }

  async fetchHeld() {
    try {
      const q = await this.acp(NS.PERMS, "getown", { effective: "yes" });
      this.held = new Set([...q.getElementsByTagName("permission")].map((p) => p.getAttribute("name")));
      this.heldError = "";
    } catch (e) {
      this.held = new Set();
      this.heldError = `Your permissions could not be read: ${e.message}`;
    }
    this._ready();
    return this.held;
  }

  /** Run an action, showing "label…", then "label: done." or "label: <the agent's text>". */
  async run(label, fn) {
    this.message.textContent = `${label}…`;
    this.error.textContent = "";
    try {
      const out = await fn();
      this.message.textContent = `${label}: done.`;
      return out;
    } catch (e) {
      this.message.textContent = "";
      this.error.textContent = `${label}: ${e.message}`;
      return undefined;
    }
  }

  /** Show a failure of a read (a list that could not be fetched) without a label. */
  fail(label, e) { this.error.textContent = `${label}: ${e.message}`; }

  /** Pushes of this entity (or another one), until the page closes. */
  onPush(fn, entity = this.jid) { this._stops.push(this.app.pushes.listen(entity, fn)); }
  onRoster(fn) {
    this.roster.addEventListener("change", fn);
    this._stops.push(() => this.roster.removeEventListener("change", fn));
  }
  onClose(fn) { this._stops.push(fn); }
  close() { for (const stop of this._stops.splice(0)) { try { stop(); } catch (e) { console.warn(e); } } }
}

/** A "label: value" line for small facts. */
export function fact(label, value) { return h("div", { class: "fact" }, h("dt", {}, label), h("dd", {}, value)); }

export function mib(kib) { return `${Math.round(Number(kib) / 1024)} MiB`; }

export function bytes(n) {
  n = Number(n);
  if (!Number.isFinite(n)) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** A small table: columns = [[title, (row) => cell]]. */
export function table(caption, columns, rows, attrs = {}) {
  return h("table", { class: "grid", ...attrs },
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, columns.map(([t]) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.length ? rows.map((r) => h("tr", {}, columns.map(([, f]) => h("td", {}, f(r)))))
      : h("tr", {}, h("td", { colspan: columns.length, class: "hint" }, "None."))));
}
