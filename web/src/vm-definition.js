// The VM's definition as a form (memory, vCPUs, boot order, the ISO in the CD
// drive, NICs on libvirt networks) and, for who holds "define", the raw XML.
import { h } from "./dom.js";
import { NS } from "./entity-context.js";
import { readFields, writeFields, plainDomain, parseXml, serialize } from "./domain-xml.js";

const BOOT_ORDERS = [["hd,cdrom", "Disk, then CD"], ["cdrom,hd", "CD, then disk"], ["hd", "Disk only"],
  ["cdrom", "CD only"], ["network,hd", "Network, then disk"]];

export function definitionSection(ctx, panel) {
  let domain = null; // the <domain> last read (plain document element)
  let dirty = false;
  const memory = h("input", { id: "vm-memory", type: "number", min: "16", step: "1", required: true });
  const vcpus = h("input", { id: "vm-vcpus", type: "number", min: "1", step: "1", required: true });
  const boot = h("select", { id: "vm-boot" }, BOOT_ORDERS.map(([v, t]) => h("option", { value: v }, t)));
  const iso = h("select", { id: "vm-iso" }, h("option", { value: "" }, "Empty drive"));
  const nets = h("div", { class: "nics", role: "group", "aria-label": "Network interfaces" });
  // the networks this VM's NICs may use (network getnames): offered, not imposed (the agent decides)
  const usable = h("datalist", { id: "vm-usable-networks" });
  const addNic = h("button", { type: "button", onclick: () => { nets.append(nicRow("")); dirty = true; } }, "Add a NIC");
  const save = h("button", { type: "submit" }, "Save definition");
  const form = h("form", { class: "card def-form", "aria-label": "Definition",
    oninput: () => { dirty = true; },
    onsubmit: (ev) => { ev.preventDefault(); submit(); } },
  h("label", { for: "vm-memory" }, "Memory (MiB)"), memory,
  h("label", { for: "vm-vcpus" }, "vCPUs"), vcpus,
  h("label", { for: "vm-boot" }, "Boot order"), boot,
  h("label", { for: "vm-iso" }, "CD drive (ISO library)"), iso,
  h("span", { class: "label" }, "NICs (libvirt networks you may use)"), nets, usable, addNic,
  h("div", { class: "row" }, save));
  const xml = h("textarea", { id: "vm-xml", rows: "14", spellcheck: "false" });
  const xmlForm = h("form", { class: "card xml-form", "aria-label": "Raw XML",
    onsubmit: (ev) => { ev.preventDefault(); defineXml(); } },
  h("label", { for: "vm-xml" }, "Raw libvirt XML"), xml, h("button", { type: "submit" }, "Define from XML"));
  panel.append(form, xmlForm);

  function nicRow(network) {
    const input = h("input", { type: "text", value: network, "aria-label": "Network name", placeholder: "default",
      class: "nic", list: "vm-usable-networks" });
    const row = h("div", { class: "row" }, input,
      h("button", { type: "button", "aria-label": `Remove NIC ${network}`, onclick: () => { row.remove(); dirty = true; } }, "Remove"));
    return row;
  }

  function fill() {
    const f = readFields(domain);
    memory.value = f.memoryMiB;
    vcpus.value = f.vcpus;
    if (![...boot.options].some((o) => o.value === f.boot)) boot.append(h("option", { value: f.boot }, f.boot));
    boot.value = f.boot;
    if (f.iso && ![...iso.options].some((o) => o.value === f.iso)) iso.append(h("option", { value: f.iso }, f.iso));
    iso.value = f.iso;
    nets.replaceChildren(...f.networks.map(nicRow));
    xml.value = serialize(domain);
    dirty = false;
  }

  async function load(force = false) {
    if (dirty && !force) return; // never take away what is being typed
    const canDefine = ctx.may("define");
    xmlForm.hidden = !canDefine;
    for (const el of [boot, iso, addNic]) el.disabled = !canDefine;
    try {
      if (ctx.may("drives_getiso") && iso.options.length === 1) {
        for (const el of await ctx.items(NS.DISK, "getiso")) {
          iso.append(h("option", { value: el.getAttribute("path") }, el.getAttribute("name")));
        }
      }
      if (ctx.may("network_getnames") && !usable.children.length) {
        for (const net of await ctx.items(NS.NET, "getnames")) {
          usable.append(h("option", { value: net.getAttribute("name") }));
        }
      }
      const el = (await ctx.items(NS.VM, "xmldesc"))[0];
      if (!el || el.localName === "not-defined") { form.hidden = true; return; }
      domain = plainDomain(el);
      fill();
    } catch (e) { ctx.fail("Definition", e); }
  }

  function fields() {
    return { memoryMiB: Number(memory.value), vcpus: Number(vcpus.value), boot: boot.value, iso: iso.value,
      networks: [...nets.querySelectorAll("input.nic")].map((i) => i.value.trim()).filter(Boolean) };
  }

  async function submit() {
    const f = fields();
    if (ctx.may("define")) {
      await ctx.run("Save definition", () => ctx.acp(NS.DEF, "define", {}, "set", [writeFields(domain, f)]));
    } else { // memory and vCPUs alone, through their own actions
      const old = readFields(domain);
      await ctx.run("Save definition", async () => {
        if (f.memoryMiB !== old.memoryMiB) await ctx.acp(NS.VM, "memory", { value: String(f.memoryMiB * 1024) }, "set");
        if (f.vcpus !== old.vcpus) await ctx.acp(NS.VM, "setvcpus", { value: String(f.vcpus) }, "set");
      });
    }
    dirty = false;
    load(true);
  }

  async function defineXml() {
    let el;
    try { el = parseXml(xml.value); } catch (e) { ctx.error.textContent = `Define from XML: ${e.message}`; return; }
    await ctx.run("Define from XML", () => ctx.acp(NS.DEF, "define", {}, "set", [el]));
    dirty = false;
    load(true);
  }

  ctx.onPush(({ ns }) => {
    if (ns === "virtualmachine:definition" || ns === "virtualmachine:control" || ns === "disk" || ns === "snapshoting") load();
  });
  load();
}
