// One XMPP session for the page: WebSocket first, BOSH as the fallback,
// automatic reconnection with a visible state. Knows nothing of the UI.
import { Strophe, $iq, $pres, $msg } from "strophe.js";

export const NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas";
export const NS_PUBSUB = "http://jabber.org/protocol/pubsub";
const S = Strophe.Status;
const RECONNECT_DELAYS = [1, 2, 4, 8, 15]; // seconds, the last one repeats
const CONNECT_TIMEOUT_MS = 10000; // a transport that gives no answer in this time is unreachable

// Why a login failed, in words for the person at the keyboard.
export const LOGIN_ERRORS = {
  auth: "Wrong JID or password.",
  unreachable: "The server cannot be reached: check the server URLs and your network.",
  badjid: "Enter a full JID such as student1@archipel.test.",
  cancelled: "Login cancelled.",
};

/** An error reply of the agent, carrying its own text. */
export class AgentError extends Error {
  constructor(iq) {
    const err = iq && iq.getElementsByTagName("error")[0];
    const text = err && err.getElementsByTagNameNS(NS_STANZAS, "text")[0];
    const raw = text ? text.textContent : "";
    // The agent's text is "message\n\nnamespace\naction": the message is what a person reads.
    const message = raw.split("\n\n")[0] || (err ? `error ${err.getAttribute("code") || ""}`.trim() : "no answer");
    super(message);
    this.code = err ? Number(err.getAttribute("code")) : null;
    this.condition = err && err.firstElementChild ? err.firstElementChild.localName : "timeout";
  }
}

export class Session extends EventTarget {
  constructor() {
    super();
    this.conn = null;
    this.state = "offline"; // offline | connecting | online | reconnecting
    this.transport = null; // "WebSocket" | "BOSH"
    this._creds = null; // in memory only, for reconnection; never stored
    this._wanted = false;
    this._attempt = 0;
    this._timer = null;
    this._handlers = []; // [fn, ns, name, type] re-installed on each connection
  }

  get jid() { return this.conn ? this.conn.jid : ""; }
  get bareJid() { return this._creds ? Strophe.getBareJidFromJid(this._creds.jid) : ""; }
  get domain() { return this._creds ? Strophe.getDomainFromJid(this._creds.jid) : ""; }

  _setState(state, detail = "") {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, detail, transport: this.transport } }));
  }

  /** Handler for incoming stanzas, kept across reconnections. fn returns nothing. */
  on(fn, ns, name, type) {
    this._handlers.push([fn, ns, name, type]);
    if (this.conn) this._install(this.conn, [fn, ns, name, type]); // added while online: from now on too
  }

  _install(conn, [fn, ns, name, type]) {
    conn.addHandler((st) => { try { fn(st); } catch (e) { console.warn(e); } return true; }, ns, name, type);
  }

  /** Log in. Resolves once online; rejects with Error(kind) where kind is a LOGIN_ERRORS key. */
  async login(jid, password, { wsUrl, boshUrl }) {
    if (!/^[^@/\s]+@[^@/\s]+$/.test(jid)) throw new Error("badjid");
    this._creds = { jid, password, wsUrl, boshUrl };
    this._wanted = true;
    this._setState("connecting");
    try {
      await this._connectAny();
    } catch (e) {
      this._wanted = false;
      this._creds = null;
      this._setState("offline");
      throw e;
    }
    this._attempt = 0;
  }

  logout() {
    this._wanted = false;
    clearTimeout(this._timer);
    const conn = this.conn;
    this.conn = null;
    this._creds = null;
    if (conn) { conn.disconnect("logout"); }
    this._setState("offline");
  }

  async _connectAny() {
    const { wsUrl, boshUrl } = this._creds;
    let last = new Error("unreachable");
    for (const [url, name] of [[wsUrl, "WebSocket"], [boshUrl, "BOSH"]]) {
      if (!url) continue;
      try {
        await this._connect(url, name);
        return;
      } catch (e) {
        if (e.message === "auth") throw e; // a wrong password is wrong on every transport
        last = e;
      }
    }
    throw last;
  }

  async _connect(url, name) {
    if (name === "BOSH") {
      // Strophe retries an unreachable BOSH URL with backoff; one request tells at once.
      try { await fetch(url, { method: "GET", mode: "no-cors", cache: "no-store" }); }
      catch (_) { throw new Error("unreachable"); }
    }
    return this._open(url, name);
  }

  _open(url, name) {
    return new Promise((resolve, reject) => {
      const conn = new Strophe.Connection(url);
      const resource = `web-${Math.random().toString(36).slice(2, 8)}`;
      let settled = false;
      const fail = (kind) => {
        if (settled) return;
        settled = true;
        clearTimeout(timeout);
        try { conn.reset(); } catch (_) { /* already gone */ }
        reject(new Error(kind));
      };
      const timeout = setTimeout(() => fail("unreachable"), CONNECT_TIMEOUT_MS);
      conn.connect(`${this._creds.jid}/${resource}`, this._creds.password, (status) => {
        if (status === S.CONNECTED) {
          if (!this._wanted) { // logged out while this attempt was under way
            settled = true;
            clearTimeout(timeout);
            conn.disconnect("logout");
            reject(new Error("cancelled"));
            return;
          }
          settled = true;
          clearTimeout(timeout);
          this.conn = conn;
          this.transport = name;
          for (const handler of this._handlers) this._install(conn, handler);
          this._setState("online"); // the roster sends the initial presence once it has loaded
          resolve();
        } else if (status === S.AUTHFAIL) {
          fail("auth");
        } else if (status === S.CONNFAIL || status === S.CONNTIMEOUT || status === S.ERROR) {
          if (!settled) fail("unreachable");
        } else if (status === S.DISCONNECTED) {
          if (!settled) fail("unreachable");
          else if (this.conn === conn) this._dropped();
        }
      });
    });
  }

  _dropped() {
    this.conn = null;
    if (!this._wanted) return;
    const delay = RECONNECT_DELAYS[Math.min(this._attempt, RECONNECT_DELAYS.length - 1)];
    this._attempt += 1;
    this._setState("reconnecting", `connection lost, retrying in ${delay} s`);
    clearTimeout(this._timer);
    this._timer = setTimeout(async () => {
      if (!this._wanted) return;
      try {
        await this._connectAny();
        this._attempt = 0;
      } catch (e) {
        if (e.message === "auth") { // the password changed meanwhile: stop here
          this._wanted = false;
          this._setState("offline", LOGIN_ERRORS.auth);
        } else {
          this._dropped();
        }
      }
    }, delay * 1000);
  }

  send(stanza) { if (this.conn) this.conn.send(stanza); }

  /** An IQ; resolves with the result stanza, rejects with AgentError. */
  iq(stanza, timeoutMs = 30000) {
    return new Promise((resolve, reject) => {
      if (!this.conn) { reject(new Error("not connected")); return; }
      this.conn.sendIQ(stanza, resolve, (iq) => reject(new AgentError(iq)), timeoutMs);
    });
  }

  /** Archipel's ACP: <query xmlns=ns><archipel action=.../></query>; resolves with the <query>.
   * children: DOM elements put inside <archipel> (a <domain>, <permission/>s, <item/>s). */
  async acp(to, ns, action, attrs = {}, type = "get", children = [], timeoutMs = 30000) {
    const stanza = $iq({ to, type }).c("query", { xmlns: ns }).c("archipel", { action, ...attrs });
    for (const child of children) stanza.cnode(child).up();
    const reply = await this.iq(stanza, timeoutMs);
    return reply.getElementsByTagNameNS(ns, "query")[0] || null;
  }

  /** The payload elements of an ACP reply (the children of its <query>). */
  async acpItems(to, ns, action, attrs = {}, type = "get", children = []) {
    const q = await this.acp(to, ns, action, attrs, type, children);
    return q ? [...q.children] : [];
  }

  /** XEP-0199 ping: resolves when ``to`` answers (the bench's floor for a round trip). */
  ping(to) { return this.iq($iq({ to, type: "get" }).c("ping", { xmlns: "urn:xmpp:ping" })); }

  /** Subscribe this account (bare JID, as Archipel's client does) to a pubsub node. */
  subscribe(service, node) {
    return this.iq($iq({ to: service, type: "set" }).c("pubsub", { xmlns: NS_PUBSUB })
      .c("subscribe", { node, jid: this.bareJid }));
  }
}

export { Strophe, $iq, $pres, $msg };
