// Who holds what on an entity (users, LDAP groups, roles), with grant and
// revoke; for the VM's owner and admins (permission_get / permission_set).
import { h } from "./dom.js";
import { NS, table } from "./entity-context.js";

let counter = 0;

function permissionEl(type, target, name, value) {
  const el = document.implementation.createDocument(null, "permission").documentElement;
  el.setAttribute("permission_type", type);
  el.setAttribute("permission_target", target);
  el.setAttribute("permission_name", name);
  el.setAttribute("permission_value", value ? "true" : "false");
  return el;
}

export function permissionsSection(ctx, panel, { roles = null } = {}) {
  const id = `perm${++counter}`;
  const list = h("div", { class: "perm-list" });
  const type = h("select", { id: `${id}-type` }, ["user", "group", "role"].map((t) => h("option", { value: t }, t)));
  const target = h("input", { id: `${id}-target`, type: "text", required: true, placeholder: "student1@archipel.test or students" });
  const names = h("datalist", { id: `${id}-names` });
  const name = h("input", { id: `${id}-name`, type: "text", required: true, list: `${id}-names`, placeholder: "create" });
  const form = h("form", { class: "card perm-form", "aria-label": "Grant a permission",
    onsubmit: (ev) => {
      ev.preventDefault();
      const [t, who, what] = [type.value, target.value.trim(), name.value.trim()];
      ctx.run(`Grant ${what} to ${who}`, () => ctx.acp(NS.PERMS, "set", {}, "set", [permissionEl(t, who, what, true)]));
    } },
  h("label", { for: type.id }, "Grant to a"), type,
  h("label", { for: target.id }, "User JID, LDAP group, or (for a role) a JID or group"), target,
  h("label", { for: name.id }, "Permission (or role name)"), name, names,
  h("button", { type: "submit", disabled: !ctx.may("permission_set") }, "Grant"));
  panel.append(list, form);
  let catalogue = [];
  let roleNames = [];

  async function loadNames() {
    try {
      catalogue = (await ctx.items(NS.PERMS, "list")).map((p) => p.getAttribute("name"));
    } catch (_) { catalogue = []; }
    if (roles) {
      try { roleNames = (await roles()).map((r) => r.getAttribute("name")); } catch (_) { roleNames = []; }
    }
    fillNames();
  }

  function fillNames() {
    const options = type.value === "role" ? roleNames : catalogue;
    names.replaceChildren(...options.map((n) => h("option", { value: n })));
  }
  type.addEventListener("change", fillNames);

  async function load() {
    try {
      const rows = [];
      for (const t of ["user", "group", "role"]) rows.push(...await ctx.items(NS.PERMS, "list", { permission_type: t }));
      list.replaceChildren(table("Granted here", [
        ["Type", (p) => p.getAttribute("permission_type")],
        ["To", (p) => p.getAttribute("permission_target")],
        ["Permission", (p) => p.getAttribute("permission_name")],
        ["", (p) => {
          const [t, who, what] = ["permission_type", "permission_target", "permission_name"].map((a) => p.getAttribute(a));
          return h("button", { type: "button", class: "danger", disabled: !ctx.may("permission_set"),
            "aria-label": `Revoke ${what} from ${who}`,
            onclick: () => ctx.run(`Revoke ${what} from ${who}`, () => ctx.acp(NS.PERMS, "set", {}, "set", [permissionEl(t, who, what, false)])) }, "Revoke");
        }],
      ], rows, { "aria-label": "Permissions granted" }));
    } catch (e) { ctx.fail("Permissions", e); }
  }
  ctx.onPush(({ ns }) => { if (ns === "permissions") load(); });
  load();
  loadNames();
}
