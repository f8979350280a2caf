// The VM's snapshots: take, revert, delete; live through "snapshoting" pushes.
import { h } from "./dom.js";
import { NS, table } from "./entity-context.js";

const text = (el, name) => { const c = [...el.children].find((x) => x.localName === name); return c ? c.textContent : ""; };

export function snapshotsSection(ctx, panel) {
  const list = h("div", { class: "snapshot-list" });
  const name = h("input", { id: "snap-name", type: "text", placeholder: "before-upgrade" });
  const description = h("input", { id: "snap-description", type: "text" });
  const form = h("form", { class: "card snap-form", "aria-label": "Take a snapshot",
    onsubmit: async (ev) => {
      ev.preventDefault();
      const attrs = {};
      if (name.value.trim()) attrs.name = name.value.trim();
      if (description.value.trim()) attrs.description = description.value.trim();
      if (await ctx.run(`Take snapshot ${attrs.name || ""}`.trim(), () => ctx.acp(NS.SNAP, "take", attrs, "set"))) {
        name.value = ""; description.value = "";
      }
    } },
  h("label", { for: "snap-name" }, "Snapshot name (empty: a timestamp)"), name,
  h("label", { for: "snap-description" }, "Description"), description,
  h("button", { type: "submit", disabled: !ctx.may("snapshot_take") }, "Take snapshot"));
  panel.append(list, form);

  async function load() {
    try {
      const snaps = await ctx.items(NS.SNAP, "get");
      list.replaceChildren(table("Snapshots", [
        ["Name", (s) => text(s, "name")],
        ["Taken", (s) => { const t = Number(text(s, "creationTime")); return t ? new Date(t * 1000).toLocaleString() : ""; }],
        ["VM state", (s) => text(s, "state")],
        ["Description", (s) => text(s, "description")],
        ["Actions", (s) => {
          const n = text(s, "name");
          return h("div", { class: "row actions" },
            h("button", { type: "button", "aria-label": `Revert to ${n}`, disabled: !ctx.may("snapshot_revert"), onclick: () => {
              if (confirm(`Revert the VM to ${n}? Changes since then are lost.`)) ctx.run(`Revert to ${n}`, () => ctx.acp(NS.SNAP, "revert", { name: n }, "set"));
            } }, "Revert"),
            h("button", { type: "button", class: "danger", "aria-label": `Delete snapshot ${n}`, disabled: !ctx.may("snapshot_delete"), onclick: () => {
              if (confirm(`Delete the snapshot ${n}?`)) ctx.run(`Delete snapshot ${n}`, () => ctx.acp(NS.SNAP, "delete", { name: n }, "set"));
            } }, "Delete"));
        }],
      ], snaps, { "aria-label": "Snapshots" }));
    } catch (e) { ctx.fail("Snapshots", e); }
  }
  ctx.onPush(({ ns }) => { if (ns === "snapshoting") load(); });
  load();
}
