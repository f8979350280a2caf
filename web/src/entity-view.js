// The right-hand pane: the page of the entity chosen in the roster (a VM or a
// hypervisor page, a person's chat), or the teacher table. One page at a
// time; its listeners end when another is shown.
import { $, h } from "./dom.js";
import { EntityContext } from "./entity-context.js";
import { vmPage } from "./vm-page.js";
import { hypervisorPage } from "./hypervisor-page.js";
import { chatSection } from "./chat-view.js";
import { teacherTable } from "./teacher-table.js";

export function setupEntityView(app) {
  const pane = $("#entity-pane");
  let current = null; // {close()}

  function closeCurrent() {
    if (current) current.close();
    current = null;
  }

  function show(item) {
    closeCurrent();
    const ctx = new EntityContext(app, item);
    current = ctx;
    if (item.role === "virtualmachine") vmPage(ctx, pane);
    else if (item.role === "hypervisor") hypervisorPage(ctx, pane, { openVm });
    else {
      const title = h("h2", {}, item.name || item.jid);
      const chat = h("section", { "aria-label": "Chat" });
      pane.replaceChildren(title, h("p", { class: "jid" }, item.jid), chat);
      chatSection(ctx, chat);
      const update = () => { title.textContent = item.fullName || item.name || item.jid; };
      ctx.onRoster(update);
    }
  }

  function openVm(jid) {
    const item = app.roster.items.get(jid);
    if (item) { app.select(jid); show(item); }
  }

  return {
    show,
    showTable() {
      closeCurrent();
      current = teacherTable(app, pane, { openVm });
    },
    clear() {
      closeCurrent();
      pane.replaceChildren(h("p", { class: "hint" }, "Choose an entity in the roster."));
    },
  };
}
