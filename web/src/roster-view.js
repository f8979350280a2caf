// The roster pane: groups by vCard ROLE, live presence, filter, add/remove,
// answers to subscription requests.
import { $, h } from "./dom.js";
import { GROUPS } from "./roster.js";

export function setupRosterView(roster, onSelect) {
  const filter = $("#roster-filter");
  let selected = null;

  function matches(item, text) {
    if (!text) return true;
    const pr = roster.presence(item);
    return [item.jid, item.name, item.fullName, pr.status].some((s) => s && s.toLowerCase().includes(text));
  }

  function render() {
    const text = filter.value.trim().toLowerCase();
    const box = $("#roster-groups");
    // keep the keyboard focus on the same contact's button across re-renders
    const focused = box.contains(document.activeElement) ? document.activeElement : null;
    const refocus = focused && focused.closest("li") ? [focused.closest("li").dataset.jid, focused.className] : null;
    box.replaceChildren();
    for (const [role, title] of GROUPS) {
      const items = [...roster.items.values()]
        .filter((it) => (role === "person" ? !["hypervisor", "virtualmachine"].includes(it.role) : it.role === role))
        .filter((it) => matches(it, text))
        .sort((a, b) => (a.name || a.jid).localeCompare(b.name || b.jid));
      const list = h("ul", { "aria-label": title });
      for (const item of items) list.append(renderItem(item));
      box.append(h("section", { class: "group", dataset: { role } },
        h("h2", {}, `${title} (${items.length})`), list));
    }
    renderRequests();
    if (refocus) {
      const li = [...box.querySelectorAll("li.contact")].find((el) => el.dataset.jid === refocus[0]);
      const again = li && li.querySelector(`button.${refocus[1].split(" ")[0]}`);
      if (again) again.focus();
    }
  }

  function renderItem(item) {
    const pr = roster.presence(item);
    const state = !pr.online ? "offline" : pr.show || "available";
    const status = pr.online ? pr.status || "Online" : item.ask === "subscribe" ? "Waiting for approval" : "Offline";
    const label = item.fullName || item.name || item.jid;
    return h("li", { class: "contact", dataset: { jid: item.jid, state } },
      h("button", { type: "button", class: "open", "aria-current": selected === item.jid ? "true" : null,
                    onclick: () => { selected = item.jid; onSelect(item); render(); } },
        h("span", { class: "dot", "aria-hidden": "true" }),
        h("span", { class: "name" }, label),
        h("span", { class: "status" }, status)),
      h("button", { type: "button", class: "remove", "aria-label": `Remove ${item.jid}`,
                    onclick: () => { if (confirm(`Remove ${item.jid} from your roster?`)) roster.remove(item.jid); } }, "×"));
  }

  function renderRequests() {
    const box = $("#requests");
    box.replaceChildren();
    box.hidden = roster.requests.size === 0;
    for (const [jid, nick] of roster.requests) {
      box.append(h("p", { class: "request", dataset: { jid } }, `${nick ? `${nick} (${jid})` : jid} wants to see your presence `,
        h("button", { type: "button", onclick: () => roster.answer(jid, true) }, "Accept"),
        h("button", { type: "button", onclick: () => roster.answer(jid, false) }, "Decline")));
    }
  }

  // A login brings one change per vCard and per presence: draw once per frame.
  let pending = false;
  function scheduleRender() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  }

  filter.addEventListener("input", render);
  roster.addEventListener("change", scheduleRender);
  $("#add-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const jid = $("#add-jid").value.trim();
    $("#add-error").textContent = "";
    if (!/^[^@/\s]+@[^@/\s]+$/.test(jid)) { $("#add-error").textContent = "Enter a bare JID such as hypervisor@archipel.test."; return; }
    try {
      await roster.add(jid);
      $("#add-jid").value = "";
    } catch (e) {
      $("#add-error").textContent = `Could not add ${jid}: ${e.message}`;
    }
  });
  render();
  return { select(jid) { selected = jid; render(); } };
}
