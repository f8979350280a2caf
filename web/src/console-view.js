// The Console tab of a VM page: asks the VM for a one-time token
// (archipel:virtualmachine:vnc display) and connects noVNC to the agent's
// WebSocket proxy with it. A token opens one connection: each Connect asks again.
// Registered in console-slot.js; app.js imports this module once.
import RFB from "@novnc/novnc";
import { h } from "./dom.js";
import { registerConsole } from "./console-slot.js";

const NS_VNC = "archipel:virtualmachine:vnc";
const XK = { Shift_L: 0xffe1, Return: 0xff0d, Tab: 0xff09, BackSpace: 0xff08 };
// US layout: characters typed with Shift (QEMU maps keysyms to keys without adding it)
const SHIFTED = new Set('~!@#$%^&*()_+{}|:"<>?'.split(""));

const CSS = `
.console { margin-top: 1rem; }
.console h3 { margin: 0 0 .5rem; font-size: 1rem; }
.console .console-bar { display: flex; flex-wrap: wrap; gap: .4rem; align-items: center; }
.console .console-screen { margin-top: .5rem; background: #111; min-height: 2rem; height: min(70vh, 600px); overflow: auto; }
.console .console-screen:fullscreen { height: 100vh; }
.console .console-paste { display: flex; flex-wrap: wrap; gap: .4rem; align-items: end; margin-top: .5rem; }
.console .console-paste textarea { flex: 1; min-width: 12rem; min-height: 2.2rem; font-family: monospace; }
.console .console-status[data-state=connected] { color: #22753f; }
.console .console-status[data-state=failed] { color: #b00020; }
`;

function injectStyle() {
  if (document.getElementById("console-style")) return;
  document.head.append(h("style", { id: "console-style" }, CSS));
}

/** The X11 keysym of one character (noVNC's rule: Latin-1 as is, else Unicode + 0x1000000). */
export function keysymOf(ch) {
  if (ch === "\n") return XK.Return;
  if (ch === "\t") return XK.Tab;
  const cp = ch.codePointAt(0);
  if ((cp >= 0x20 && cp <= 0x7e) || (cp >= 0xa0 && cp <= 0xff)) return cp;
  return 0x1000000 + cp;
}

/**
 * Fill `slot` (the VM page's <section id="console">) with the console of the VM
 * `target()` names (its full JID). Returns the cleanup the page calls when it closes.
 */
export function mountConsole(slot, session, target) {
  injectStyle();
  let rfb = null;
  const status = h("p", { class: "console-status", role: "status", "aria-live": "polite", dataset: { state: "idle" } },
    "Not connected.");
  const screen = h("div", { class: "console-screen", role: "application", "aria-label": "VM screen (keyboard goes to the VM while it has the focus)", tabindex: "-1" });
  const connectBtn = h("button", { type: "button", class: "console-connect", onclick: () => (rfb ? disconnect() : connect()) }, "Connect");
  const cadBtn = h("button", { type: "button", disabled: true, "aria-label": "Send Ctrl-Alt-Del to the VM",
    onclick: () => { if (rfb) { rfb.sendCtrlAltDel(); rfb.focus(); } } }, "Ctrl-Alt-Del");
  const fullBtn = h("button", { type: "button", disabled: true, "aria-label": "Show the console full screen",
    onclick: () => screen.requestFullscreen && screen.requestFullscreen().catch((e) => setStatus("failed", `Full screen refused: ${e.message}`)) }, "Full screen");
  const scale = h("input", { type: "checkbox", id: "console-scale", checked: true,
    onchange: () => { if (rfb) rfb.scaleViewport = scale.checked; } });
  const text = h("textarea", { id: "console-paste-text", rows: "1", placeholder: "text to type into the VM" });
  const sendBtn = h("button", { type: "submit", disabled: true }, "Send text");
  const paste = h("form", { class: "console-paste", onsubmit: (ev) => { ev.preventDefault(); typeText(text.value); } },
    h("label", { for: "console-paste-text" }, "Paste (typed as keys)"), text, sendBtn);
  slot.classList.add("console", "card");
  slot.append(h("h3", {}, "Console"),
    h("div", { class: "console-bar", role: "group", "aria-label": "Console controls" },
      connectBtn, cadBtn, fullBtn, h("label", { class: "check", for: "console-scale" }, scale, " Scale to fit")),
    status, paste, screen);

  function setStatus(state, message) {
    status.dataset.state = state;
    status.textContent = message;
  }

  function setConnected(on) {
    for (const b of [cadBtn, fullBtn, sendBtn]) b.disabled = !on;
  }

  async function connect() {
    connectBtn.disabled = true;
    setStatus("connecting", "Asking the VM for a console token…");
    let display;
    try {
      const q = await session.acp(target(), NS_VNC, "display");
      display = q && q.getElementsByTagName("display")[0];
      if (!display) throw new Error("the VM sent no display");
    } catch (e) {
      connectBtn.disabled = false;
      setStatus("failed", `Console: ${e.message}`);
      return;
    }
    const url = display.getAttribute("url") ||
      `${display.getAttribute("supportssl") === "True" ? "wss" : "ws"}://${display.getAttribute("host")}:` +
      `${display.getAttribute("proxy")}${display.getAttribute("path")}?token=${encodeURIComponent(display.getAttribute("token"))}`;
    if (location.protocol === "https:" && url.startsWith("ws:")) { // the browser would block it silently
      connectBtn.disabled = false;
      setStatus("failed", "This page is HTTPS but the hypervisor's console proxy has no TLS: " +
        "its administrator sets [VNC] vnc_certificate_file.");
      return;
    }
    setStatus("connecting", "Connecting to the console…");
    rfb = new RFB(screen, url, { shared: true });
    rfb.scaleViewport = scale.checked;
    rfb.background = "#111";
    rfb.addEventListener("connect", () => {
      setStatus("connected", "Connected. Click the screen to type into the VM.");
      connectBtn.textContent = "Disconnect";
      connectBtn.disabled = false;
      setConnected(true);
      rfb.focus();
    });
    rfb.addEventListener("disconnect", (ev) => {
      rfb = null;
      connectBtn.textContent = "Connect";
      connectBtn.disabled = false;
      setConnected(false);
      if (status.dataset.state === "closing") setStatus("idle", "Disconnected.");
      else setStatus("failed", ev.detail.clean ? "The console was closed by the VM's side." : "The console connection was lost or refused.");
    });
    rfb.addEventListener("securityfailure", (ev) => setStatus("failed", `Console security failure: ${ev.detail.reason || ev.detail.status}`));
  }

  function disconnect() {
    if (!rfb) return;
    setStatus("closing", "Disconnecting…");
    rfb.disconnect();
  }

  // QEMU's VNC server takes keysyms; what needs Shift on a US keyboard gets it.
  function typeText(value) {
    if (!rfb || !value) return;
    for (const ch of value.replace(/\r\n?/g, "\n")) {
      const sym = keysymOf(ch);
      const shift = SHIFTED.has(ch) || (ch >= "A" && ch <= "Z");
      if (shift) rfb.sendKey(XK.Shift_L, "ShiftLeft", true);
      rfb.sendKey(sym, null);
      if (shift) rfb.sendKey(XK.Shift_L, "ShiftLeft", false);
    }
    rfb.clipboardPasteFrom(value); // the guest's clipboard too, where it has an agent for it
    rfb.focus();
  }

  return disconnect; // the page closes (another entity, logout): so does an open console
}

registerConsole((slot, ctx) => mountConsole(slot, ctx.session, () => ctx.to()));
