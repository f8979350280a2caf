// Accessible tabs (WAI-ARIA tabs pattern): arrow keys move between tabs, each
// panel is built the first time it is shown (fewer requests for unseen parts).
import { h } from "./dom.js";

let counter = 0;

export function tabs(label, specs) {
  // specs: [{id, title, build: (panel) => void, hidden?}]
  const list = h("div", { role: "tablist", "aria-label": label, class: "tabs" });
  const panels = h("div", { class: "panels" });
  const entries = [];
  const uid = ++counter;
  for (const spec of specs) {
    const tab = h("button", { type: "button", role: "tab", id: `tab-${uid}-${spec.id}`, "aria-selected": "false",
                              tabindex: "-1", dataset: { tab: spec.id }, "aria-controls": `panel-${uid}-${spec.id}` }, spec.title);
    const panel = h("section", { role: "tabpanel", id: `panel-${uid}-${spec.id}`, class: `panel panel-${spec.id}`,
                                 "aria-labelledby": tab.id, hidden: true });
    const entry = { spec, tab, panel, built: false };
    tab.addEventListener("click", () => select(entry));
    tab.addEventListener("keydown", (ev) => {
      const visible = entries.filter((e) => !e.tab.hidden);
      const i = visible.indexOf(entry);
      let next = null;
      if (ev.key === "ArrowRight") next = visible[(i + 1) % visible.length];
      else if (ev.key === "ArrowLeft") next = visible[(i - 1 + visible.length) % visible.length];
      else if (ev.key === "Home") next = visible[0];
      else if (ev.key === "End") next = visible[visible.length - 1];
      if (next) { ev.preventDefault(); select(next); next.tab.focus(); }
    });
    entries.push(entry);
    list.append(tab);
    panels.append(panel);
  }

  function select(entry) {
    for (const e of entries) {
      const on = e === entry;
      e.tab.setAttribute("aria-selected", on ? "true" : "false");
      e.tab.tabIndex = on ? 0 : -1;
      e.panel.hidden = !on;
    }
    if (!entry.built) { entry.built = true; entry.spec.build(entry.panel); }
  }

  return {
    el: h("div", { class: "tabbed" }, list, panels),
    select(id) { const e = entries.find((x) => x.spec.id === id); if (e && !e.tab.hidden) select(e); },
    /** Show or hide a tab (what the user holds decides); a hidden selected tab falls back to the first. */
    show(id, visible) {
      const e = entries.find((x) => x.spec.id === id);
      if (!e) return;
      e.tab.hidden = !visible;
      if (!visible && e.tab.getAttribute("aria-selected") === "true") select(entries.find((x) => !x.tab.hidden));
    },
    first() { select(entries.find((x) => !x.tab.hidden)); },
  };
}
