// Chat with an entity (its chat commands: "help", "start", "info" …). The
// conversation of each contact is kept for the session.
import { h } from "./dom.js";
import { $msg, Strophe } from "./session.js";

const logs = new Map(); // bare jid -> [{from, text}]
let installed = null;
const listeners = new Set();

function install(session) {
  if (installed === session) return;
  installed = session;
  session.on((m) => {
    const body = m.getElementsByTagName("body")[0];
    if (!body) return;
    const from = Strophe.getBareJidFromJid(m.getAttribute("from") || "");
    record(from, from, body.textContent);
  }, null, "message", "chat");
  session.addEventListener("state", ({ detail }) => { if (detail.state === "offline") logs.clear(); });
}

function record(contact, from, text) {
  if (!logs.has(contact)) logs.set(contact, []);
  logs.get(contact).push({ from, text });
  for (const fn of listeners) fn(contact);
}

export function chatSection(ctx, panel) {
  install(ctx.session);
  const log = h("ol", { class: "chat-log", "aria-live": "polite", "aria-label": `Conversation with ${ctx.jid}` });
  const input = h("input", { id: "chat-input", type: "text", autocomplete: "off", placeholder: "help" });
  const form = h("form", { class: "row chat-form", onsubmit: (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    ctx.session.send($msg({ to: ctx.to(), type: "chat" }).c("body").t(text));
    record(ctx.jid, ctx.session.bareJid, text);
    input.value = "";
  } }, h("label", { for: "chat-input", class: "sr-only" }, "Message"), input, h("button", { type: "submit" }, "Send"));
  panel.append(log, form);

  function render(contact) {
    if (contact !== ctx.jid) return;
    log.replaceChildren(...(logs.get(ctx.jid) || []).map(({ from, text }) =>
      h("li", { class: from === ctx.jid ? "them" : "me" }, h("span", { class: "who" }, from === ctx.jid ? "VM" : "You"), h("pre", {}, text))));
    log.scrollTop = log.scrollHeight;
  }
  listeners.add(render);
  ctx.onClose(() => listeners.delete(render));
  render(ctx.jid);
}
