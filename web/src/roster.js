// The user's roster as a model: items, their vCard ROLE, live presence.
// Emits "change" whenever anything shown may have changed.
import { Strophe, $iq, $pres } from "./session.js";

const NS_ROSTER = "jabber:iq:roster";
const NS_VCARD = "vcard-temp";

// vCard ROLE → group shown; anything else (or no vCard) is a person.
export const GROUPS = [
  ["hypervisor", "Hypervisors"],
  ["virtualmachine", "Virtual machines"],
  ["person", "People"],
];

export class Roster extends EventTarget {
  constructor(session) {
    super();
    this.session = session;
    this.items = new Map(); // bare jid -> {jid, name, subscription, ask, role, resources: Map(res -> {show, status})}
    this.requests = new Map(); // bare jid asking to see our presence -> the nick it gave
    session.on((iq) => this._onPush(iq), NS_ROSTER, "iq", "set");
    session.on((p) => this._onPresence(p), null, "presence");
    session.addEventListener("state", (e) => {
      if (e.detail.state === "online") this.load().catch((err) => console.warn("roster:", err.message));
      else if (e.detail.state === "offline") this._forget(); // logged out: nothing of this user stays
      else this._allOffline();
    });
  }

  _changed() { this.dispatchEvent(new Event("change")); }

  _forget() {
    this.items.clear();
    this.requests.clear();
    this.loaded = false;
    this._changed();
  }

  _allOffline() {
    for (const item of this.items.values()) item.resources.clear();
    this._changed();
  }

  async load() {
    const reply = await this.session.iq($iq({ type: "get" }).c("query", { xmlns: NS_ROSTER }));
    const seen = new Set();
    for (const el of reply.getElementsByTagName("item")) {
      seen.add(this._upsert(el));
    }
    for (const jid of [...this.items.keys()]) if (!seen.has(jid)) this.items.delete(jid);
    this.loaded = true;
    this._changed();
    this.session.send($pres()); // initial presence after the roster (RFC 6121 §2.2): no presence is missed
  }

  _upsert(el) {
    const jid = el.getAttribute("jid");
    const old = this.items.get(jid);
    const item = old || { jid, role: undefined, resources: new Map() };
    item.name = el.getAttribute("name") || "";
    item.subscription = el.getAttribute("subscription") || "none";
    item.ask = el.getAttribute("ask") || "";
    this.items.set(jid, item);
    if (item.role === undefined) { item.role = null; this._fetchRole(item); }
    return jid;
  }

  async _fetchRole(item) {
    try {
      const reply = await this.session.iq($iq({ type: "get", to: item.jid }).c("vCard", { xmlns: NS_VCARD }), 15000);
      const role = reply.getElementsByTagName("ROLE")[0];
      const fn = reply.getElementsByTagName("FN")[0];
      item.role = role ? role.textContent.trim().toLowerCase() : "person";
      if (fn && fn.textContent.trim()) item.fullName = fn.textContent.trim();
    } catch (_) {
      item.role = "person";
    }
    this._changed();
  }

  _onPush(iq) {
    const from = iq.getAttribute("from");
    if (from && Strophe.getBareJidFromJid(from) !== this.session.bareJid) return; // only the server's own pushes
    for (const el of iq.getElementsByTagName("item")) {
      if (el.getAttribute("subscription") === "remove") this.items.delete(el.getAttribute("jid"));
      else this._upsert(el);
    }
    this.session.send($iq({ type: "result", id: iq.getAttribute("id") }));
    this._changed();
  }

  _onPresence(p) {
    const from = p.getAttribute("from") || "";
    const bare = Strophe.getBareJidFromJid(from);
    const type = p.getAttribute("type") || "available";
    if (type === "subscribe") {
      if (this.items.has(bare)) { // a contact the user added asks back: mutual, as most clients do
        this.session.send($pres({ to: bare, type: "subscribed" }));
        return;
      }
      const nick = p.getElementsByTagNameNS("http://jabber.org/protocol/nick", "nick")[0];
      this.requests.set(bare, nick ? nick.textContent : "");
      this._changed();
      return;
    }
    if (type === "error" || type === "subscribed" || type === "unsubscribe" || type === "unsubscribed") return;
    const item = this.items.get(bare);
    if (!item) return;
    const res = Strophe.getResourceFromJid(from) || "";
    const before = this.presence(item).status;
    if (type === "unavailable") item.resources.delete(res);
    else {
      const show = p.getElementsByTagName("show")[0];
      const status = p.getElementsByTagName("status")[0];
      item.resources.set(res, { show: show ? show.textContent : "", status: status ? status.textContent : "" });
    }
    if (this.presence(item).status !== before) item.changedAt = new Date(); // "last change" of the teacher table
    this._changed();
  }

  /** The presence shown for an item: its first available resource, or offline. */
  presence(item) {
    for (const [resource, pr] of item.resources) return { online: true, resource, ...pr };
    return { online: false, resource: null, show: "", status: "" };
  }

  /** Full JID to send ACP requests to (entities answer on their resource). */
  fullJid(item) {
    const pr = this.presence(item);
    return pr.online && pr.resource ? `${item.jid}/${pr.resource}` : item.jid;
  }

  async add(jid, name = "") {
    const attrs = { jid };
    if (name) attrs.name = name;
    await this.session.iq($iq({ type: "set" }).c("query", { xmlns: NS_ROSTER }).c("item", attrs));
    this.session.send($pres({ to: jid, type: "subscribe" }));
  }

  async remove(jid) {
    await this.session.iq($iq({ type: "set" }).c("query", { xmlns: NS_ROSTER })
      .c("item", { jid, subscription: "remove" }));
  }

  /** Accept (and subscribe back) or decline a subscription request. */
  answer(jid, accept) {
    const nick = this.requests.get(jid) || "";
    this.requests.delete(jid);
    this.session.send($pres({ to: jid, type: accept ? "subscribed" : "unsubscribed" }));
    if (accept && !this.items.has(jid)) this.add(jid, nick).catch(() => {});
    this._changed();
  }
}
