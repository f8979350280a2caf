// Archipel's pushes: the pubsub events node /archipel/<bare>/events of every
// hypervisor and VM in the roster, subscribed once seen online. Emits "push"
// with {entity, ns, change, el} where ns is the part after "archipel:push:".
import { Strophe } from "./session.js";

const NS_EVENT = "http://jabber.org/protocol/pubsub#event";
const PUSH_PREFIX = "archipel:push:";
const ENTITY_ROLES = ["hypervisor", "virtualmachine"];

export class Pushes extends EventTarget {
  constructor(session, roster) {
    super();
    this.session = session;
    this.roster = roster;
    this.subscribed = new Set(); // bare JIDs subscribed in this session
    session.on((m) => this._onMessage(m), null, "message");
    session.addEventListener("state", () => this.subscribed.clear());
    roster.addEventListener("change", () => this._subscribeAll());
  }

  get service() { return `pubsub.${this.session.domain}`; }

  _subscribeAll() {
    if (this.session.state !== "online") return;
    for (const item of this.roster.items.values()) {
      // the node's access model is "presence": subscribe once we see the entity
      if (!ENTITY_ROLES.includes(item.role)) continue;
      if (!this.roster.presence(item).online) {
        // gone (unmanaged, freed, restarted): its node may be new when it is back
        this.subscribed.delete(item.jid);
        continue;
      }
      if (this.subscribed.has(item.jid)) continue;
      this.subscribed.add(item.jid);
      this.session.subscribe(this.service, `/archipel/${item.jid}/events`).catch((e) => {
        this.subscribed.delete(item.jid); // asked again on the next roster change
        console.warn(`events of ${item.jid}:`, e.message);
      });
    }
  }

  _onMessage(m) {
    const event = m.getElementsByTagNameNS(NS_EVENT, "event")[0];
    if (!event) return;
    for (const items of event.getElementsByTagNameNS(NS_EVENT, "items")) {
      const node = items.getAttribute("node") || "";
      const entity = node.split("/")[2] || Strophe.getBareJidFromJid(m.getAttribute("from") || "");
      for (const item of items.getElementsByTagNameNS(NS_EVENT, "item")) {
        for (const el of item.children) {
          if (el.localName !== "push" || !(el.namespaceURI || "").startsWith(PUSH_PREFIX)) continue;
          const ns = el.namespaceURI.slice(PUSH_PREFIX.length);
          this.dispatchEvent(new CustomEvent("push", { detail: { entity, ns, change: el.getAttribute("change"), el } }));
        }
      }
    }
  }

  /** Listen to the pushes of one entity (bare JID); returns a function that stops listening. */
  listen(entity, fn) {
    const handler = ({ detail }) => { if (detail.entity === entity) fn(detail); };
    this.addEventListener("push", handler);
    return () => this.removeEventListener("push", handler);
  }
}
