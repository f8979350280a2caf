// Entry point: wires the session, the login form, the roster and entity panes.
import { $ } from "./dom.js";
import { Session } from "./session.js";
import { Roster } from "./roster.js";
import { setupLogin } from "./login.js";
import { setupRosterView } from "./roster-view.js";
import { setupEntityView } from "./entity-view.js";

const STATE_TEXT = { offline: "Offline", connecting: "Connecting…", online: "Connected", reconnecting: "Reconnecting…" };

function main() {
  const session = new Session();
  const roster = new Roster(session);
  const entity = setupEntityView(session, roster);
  setupRosterView(roster, (item) => entity.show(item));

  session.addEventListener("state", ({ detail }) => {
    const el = $("#conn-state");
    el.dataset.state = detail.state;
    let text = STATE_TEXT[detail.state];
    if (detail.state === "online") text += ` as ${session.bareJid} over ${detail.transport}`;
    if (detail.detail) text += ` (${detail.detail})`;
    el.textContent = text;
    $("#logout").hidden = detail.state === "offline";
    if (detail.state === "offline") showLogin(detail.detail);
  });

  function showLogin(message) {
    $("#app-view").hidden = true;
    $("#login-view").hidden = false;
    if (message) $("#login-error").textContent = message;
  }

  $("#logout").addEventListener("click", () => { session.logout(); entity.clear(); });
  setupLogin(session, () => {
    $("#login-view").hidden = true;
    $("#app-view").hidden = false;
    $("#roster-filter").focus();
  });
  window.archipel = { session, roster }; // for the browser tests and the curious
}

main();
