// The login form: URLs prefilled from the page's origin, "remember me" keeps
// the JID and URLs in localStorage (never the password).
import { $ } from "./dom.js";
import { LOGIN_ERRORS } from "./session.js";

const STORE_KEY = "archipel.login";

export function defaultUrls(loc = window.location) {
  const ws = loc.protocol === "https:" ? "wss:" : "ws:";
  return { wsUrl: `${ws}//${loc.host}/ws`, boshUrl: `${loc.origin}/http-bind` };
}

function remembered() {
  try { return JSON.parse(localStorage.getItem(STORE_KEY) || "null"); } catch (_) { return null; }
}

export function setupLogin(session, onLoggedIn) {
  const form = $("#login-form");
  const saved = remembered();
  const urls = { ...defaultUrls(), ...(saved || {}) };
  $("#login-jid").value = saved ? saved.jid || "" : "";
  $("#login-ws").value = urls.wsUrl;
  $("#login-bosh").value = urls.boshUrl;
  $("#login-remember").checked = Boolean(saved);
  (saved ? $("#login-password") : $("#login-jid")).focus();

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const jid = $("#login-jid").value.trim();
    const password = $("#login-password").value;
    const wsUrl = $("#login-ws").value.trim();
    const boshUrl = $("#login-bosh").value.trim();
    const error = $("#login-error");
    error.textContent = "";
    $("#login-submit").disabled = true;
    try {
      await session.login(jid, password, { wsUrl, boshUrl });
      if ($("#login-remember").checked) localStorage.setItem(STORE_KEY, JSON.stringify({ jid, wsUrl, boshUrl }));
      else localStorage.removeItem(STORE_KEY);
      $("#login-password").value = "";
      onLoggedIn();
    } catch (e) {
      error.textContent = LOGIN_ERRORS[e.message] || `Login failed: ${e.message}`;
      $("#login-password").focus();
    } finally {
      $("#login-submit").disabled = false;
    }
  });
}
