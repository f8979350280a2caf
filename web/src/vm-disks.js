// The VM's disks: list, create (or a qcow2 overlay of a golden image), attach
// to the definition, resize, convert, copy to the golden images, delete; the
// ISO library. Long copies show the agent's "progress" pushes.
import { h } from "./dom.js";
import { NS, bytes, table } from "./entity-context.js";
import { ProgressBar } from "./progress.js";
import { withDisk, diskSources, plainDomain } from "./domain-xml.js";

export function disksSection(ctx, panel) {
  const list = h("div", { class: "disk-list" });
  const isos = h("ul", { class: "iso-list", "aria-label": "ISO library" });
  const progress = new ProgressBar("Disk operation");
  const name = h("input", { id: "disk-name", type: "text", required: true, placeholder: "system" });
  const size = h("input", { id: "disk-size", type: "number", min: "1", step: "1", placeholder: "10" });
  const unit = h("select", { id: "disk-unit", "aria-label": "Size unit" }, ["M", "G"].map((u) => h("option", { value: u, selected: u === "G" }, `${u}iB`)));
  const format = h("select", { id: "disk-format" }, ["qcow2", "raw"].map((f) => h("option", { value: f }, f)));
  const golden = h("select", { id: "disk-golden" }, h("option", { value: "" }, "None (blank disk)"));
  const attach = h("input", { id: "disk-attach", type: "checkbox", checked: true });
  const createForm = h("form", { class: "card disk-form", "aria-label": "Create a disk",
    onsubmit: (ev) => { ev.preventDefault(); create(); } },
  h("label", { for: "disk-name" }, "Disk name"), name,
  h("label", { for: "disk-size" }, "Size (empty with a golden image: its size)"), h("div", { class: "row" }, size, unit),
  h("label", { for: "disk-format" }, "Format"), format,
  h("label", { for: "disk-golden" }, "Overlay of a golden image"), golden,
  h("label", { class: "check" }, attach, " Attach it to the definition"),
  h("button", { type: "submit" }, "Create disk"));
  const goldenDisk = h("select", { id: "golden-disk" });
  const goldenName = h("input", { id: "golden-name", type: "text", required: true, placeholder: "debian-12-base" });
  const goldenForm = h("form", { class: "card golden-form", "aria-label": "Make a golden image",
    onsubmit: (ev) => {
      ev.preventDefault();
      const [n, g] = [goldenDisk.value, goldenName.value.trim()];
      ctx.run(`Golden copy of ${n}`, () => ctx.acp(NS.DISK, "setgolden", { name: n, golden: g }, "set"));
    } },
  h("label", { for: "golden-disk" }, "Copy a disk of this VM (off) to the golden images"), goldenDisk,
  h("label", { for: "golden-name" }, "Golden image name"), goldenName,
  h("button", { type: "submit" }, "Make golden image"));
  panel.append(progress.el, list, createForm, goldenForm, h("h3", {}, "ISO library"), isos);
  let domain = null;

  async function load() {
    try {
      const disks = await ctx.items(NS.DISK, "get");
      if (ctx.may("xmldesc")) {
        const el = (await ctx.items(NS.VM, "xmldesc"))[0];
        domain = el && el.localName === "domain" ? plainDomain(el) : null;
      }
      const used = new Set(domain ? diskSources(domain) : []);
      const chosen = goldenDisk.value;
      goldenDisk.replaceChildren(...disks.map((d) => h("option", { value: d.getAttribute("name") }, d.getAttribute("name"))));
      if (chosen) goldenDisk.value = chosen;
      goldenForm.hidden = !ctx.may("drives_setgolden") || !disks.length;
      list.replaceChildren(table("Disks of this VM", [
        ["Name", (d) => d.getAttribute("name")],
        ["Format", (d) => d.getAttribute("format") || d.getAttribute("error") || ""],
        ["Size", (d) => d.getAttribute("virtualSize") ? bytes(d.getAttribute("virtualSize")) : ""],
        ["On disk", (d) => d.getAttribute("diskSize") ? bytes(d.getAttribute("diskSize")) : ""],
        ["Backing", (d) => (d.getAttribute("backingFile") || "").split("/").pop()],
        ["In use", (d) => (used.has(d.getAttribute("path")) ? "yes" : "no")],
        ["Actions", (d) => actions(d, used.has(d.getAttribute("path")))],
      ], disks, { "aria-label": "Disks" }));
    } catch (e) { ctx.fail("Disks", e); }
  }

  function actions(d, used) {
    const n = d.getAttribute("name");
    const newSize = h("input", { type: "text", size: "5", placeholder: "20G", "aria-label": `New size of ${n}` });
    const fmt = d.getAttribute("format") === "raw" ? "qcow2" : "raw";
    return h("div", { class: "row actions" },
      !used && domain && ctx.may("define") ? h("button", { type: "button", onclick: () => ctx.run(`Attach ${n}`,
        () => ctx.acp(NS.DEF, "define", {}, "set", [withDisk(domain, d.getAttribute("path"), d.getAttribute("format"))])) }, "Attach") : null,
      newSize,
      h("button", { type: "button", "aria-label": `Resize ${n}`, onclick: () => {
        if (!newSize.value.trim()) { ctx.error.textContent = `Resize ${n}: enter a new size such as 20G`; return; }
        ctx.run(`Resize ${n}`, () => ctx.acp(NS.DISK, "resize", { name: n, size: newSize.value.trim() }, "set"));
      } }, "Resize"),
      h("button", { type: "button", "aria-label": `Convert ${n} to ${fmt}`,
        onclick: () => ctx.run(`Convert ${n}`, () => ctx.acp(NS.DISK, "convert", { name: n, format: fmt }, "set")) }, `To ${fmt}`),
      h("button", { type: "button", class: "danger", "aria-label": `Delete ${n}`, onclick: () => {
        if (confirm(`Delete the disk ${n}? Its data is lost.`)) {
          ctx.run(`Delete ${n}`, () => ctx.acp(NS.DISK, "delete", { name: n, undefine: "yes" }, "set"));
        }
      } }, "Delete"));
  }

  async function loadLibraries() {
    try {
      const items = ctx.may("drives_getiso") ? await ctx.items(NS.DISK, "getiso") : [];
      isos.replaceChildren(...(items.length ? items.map((i) => h("li", {}, i.getAttribute("name")))
        : [h("li", { class: "hint" }, "No ISO images.")]));
    } catch (e) { ctx.fail("ISO library", e); }
    await loadGoldens();
  }

  async function loadGoldens() {
    golden.disabled = !ctx.may("drives_getgolden");
    if (golden.disabled) return;
    try {
      const chosen = golden.value;
      golden.replaceChildren(h("option", { value: "" }, "None (blank disk)"),
        ...(await ctx.items(NS.DISK, "getgolden")).map((g) => h("option", { value: g.getAttribute("name") }, g.getAttribute("name"))));
      if ([...golden.options].some((o) => o.value === chosen)) golden.value = chosen;
    } catch (_) { golden.disabled = true; }
  }

  async function create() {
    const attrs = { name: name.value.trim(), format: format.value };
    if (size.value) { attrs.size = size.value; attrs.unit = unit.value; }
    if (golden.value) attrs.golden = golden.value;
    const q = await ctx.run(`Create disk ${attrs.name}`, async () => {
      const reply = await ctx.acp(NS.DISK, "create", attrs, "set");
      const disk = reply && reply.firstElementChild;
      if (attach.checked && disk && domain && ctx.may("define")) {
        await ctx.acp(NS.DEF, "define", {}, "set", [withDisk(domain, disk.getAttribute("path"), disk.getAttribute("format"))]);
      }
      return reply;
    });
    if (q) name.value = "";
  }

  ctx.onPush(({ ns, change, el }) => {
    if (ns === "disk") {
      const d = el.firstElementChild;
      if (change === "progress" && d) progress.set(`${d.getAttribute("action")} ${d.getAttribute("name")}`, Number(d.getAttribute("progress")));
      else if (change === "failed" && d) { progress.done(`${d.getAttribute("action")} ${d.getAttribute("name")} failed`); ctx.error.textContent = d.getAttribute("error") || ""; }
      else if (["converted", "goldened"].includes(change) && d) progress.done(`${change === "converted" ? "Converted" : "Golden copy made of"} ${d.getAttribute("source") || d.getAttribute("name")}`);
      if (change === "goldened") loadGoldens();
      if (change !== "progress") load();
    } else if (ns === "virtualmachine:definition") load();
  });
  load();
  loadLibraries();
}
