// Entry point: wires the session, the login form, the roster and entity panes.
import { $ } from "./dom.js";
import { Session } from "./session.js";
import { Roster } from "./roster.js";
import { setupLogin } from "./login.js";
import { setupRosterView } from "./roster-view.js";
import { setupEntityView } from "./entity-view.js";
import { Pushes } from "./pushes.js";
import "./console-view.js"; // fills the VM page's Console tab (console-slot.js)

const STATE_TEXT = { offline: "Offline", connecting: "Connecting…", online: "Connected", reconnecting: "Reconnecting…" };

function main() {
  const session = new Session();
  const roster = new Roster(session);
  const pushes = new Pushes(session, roster);
  const app = { session, roster, pushes, select: () => {} };
  const entity = setupEntityView(app);
  const rosterView = setupRosterView(roster, (item) => entity.show(item));
  app.select = rosterView.select;
  $("#open-table").addEventListener("click", () => { rosterView.select(null); entity.showTable(); });

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
  window.archipel = { session, roster, pushes }; // for the browser tests and the curious
}

main();
