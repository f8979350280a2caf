// Reading and editing a libvirt <domain> in the browser (DOMParser): the
// fields the definition form shows, and the same fields written back.
const parser = new DOMParser();

export function parseXml(text) {
  const doc = parser.parseFromString(text, "application/xml");
  const err = doc.getElementsByTagName("parsererror")[0];
  if (err) throw new Error(`not well-formed XML: ${err.textContent.split("\n")[0]}`);
  return doc.documentElement;
}

/** A copy of a <domain> received in a reply, as a document of its own without namespace. */
export function plainDomain(el) {
  return parseXml(new XMLSerializer().serializeToString(el).replace(/ xmlns="[^"]*"/g, ""));
}

export function serialize(el) { return new XMLSerializer().serializeToString(el); }

const child = (el, name) => [...el.children].find((c) => c.localName === name) || null;

function ensure(parent, name, before = null) {
  let el = child(parent, name);
  if (!el) {
    el = parent.ownerDocument.createElement(name);
    parent.insertBefore(el, before);
  }
  return el;
}

function kib(el) {
  if (!el) return 0;
  const n = Number(el.textContent.trim());
  const unit = (el.getAttribute("unit") || "KiB").toLowerCase();
  const scale = { b: 1 / 1024, bytes: 1 / 1024, k: 1, kib: 1, m: 1024, mib: 1024, g: 1024 ** 2, gib: 1024 ** 2 }[unit] || 1;
  return Math.round(n * scale);
}

/** {memoryMiB, vcpus, boot: "hd,cdrom", iso: path|"", networks: [name]} */
export function readFields(domain) {
  const os = child(domain, "os");
  const devices = child(domain, "devices");
  const boot = os ? [...os.children].filter((c) => c.localName === "boot").map((b) => b.getAttribute("dev")) : [];
  const cdrom = devices && [...devices.children].find((d) => d.localName === "disk" && d.getAttribute("device") === "cdrom");
  const src = cdrom && child(cdrom, "source");
  const networks = devices ? [...devices.children]
    .filter((d) => d.localName === "interface" && d.getAttribute("type") === "network")
    .map((i) => (child(i, "source") || { getAttribute: () => "" }).getAttribute("network") || "") : [];
  return {
    memoryMiB: Math.round(kib(child(domain, "memory")) / 1024),
    vcpus: Number((child(domain, "vcpu") || { textContent: "1" }).textContent.trim()),
    boot: boot.join(","),
    iso: src ? src.getAttribute("file") || "" : "",
    networks,
  };
}

/** Write the form's fields into a copy of the domain. */
export function writeFields(original, fields) {
  const domain = plainDomain(original);
  const doc = domain.ownerDocument;
  for (const name of ["memory", "currentMemory"]) {
    const el = ensure(domain, name, child(domain, "vcpu"));
    el.textContent = String(fields.memoryMiB * 1024);
    el.setAttribute("unit", "KiB");
  }
  ensure(domain, "vcpu", child(domain, "os")).textContent = String(fields.vcpus);
  const os = ensure(domain, "os");
  for (const b of [...os.children].filter((c) => c.localName === "boot")) b.remove();
  const afterType = child(os, "type") ? child(os, "type").nextSibling : os.firstChild;
  for (const dev of fields.boot.split(",").filter(Boolean)) {
    const b = doc.createElement("boot");
    b.setAttribute("dev", dev);
    os.insertBefore(b, afterType);
  }
  const devices = ensure(domain, "devices");
  let cdrom = [...devices.children].find((d) => d.localName === "disk" && d.getAttribute("device") === "cdrom");
  if (fields.iso) {
    if (!cdrom) {
      cdrom = doc.createElement("disk");
      cdrom.setAttribute("type", "file");
      cdrom.setAttribute("device", "cdrom");
      const driver = doc.createElement("driver");
      driver.setAttribute("name", "qemu");
      driver.setAttribute("type", "raw");
      const target = doc.createElement("target");
      target.setAttribute("dev", freeTarget(devices, "sd"));
      target.setAttribute("bus", "sata");
      cdrom.append(driver, doc.createElement("source"), target, doc.createElement("readonly"));
      devices.insertBefore(cdrom, firstOf(devices, ["disk", "controller", "interface", "serial", "console", "input", "graphics", "video"]));
    }
    ensure(cdrom, "source", child(cdrom, "target")).setAttribute("file", fields.iso);
  } else if (cdrom) {
    const src = child(cdrom, "source");
    if (src) src.remove(); // an empty drive
  }
  const ifaces = [...devices.children].filter((d) => d.localName === "interface" && d.getAttribute("type") === "network");
  fields.networks.forEach((net, i) => {
    let iface = ifaces[i];
    if (!iface) {
      iface = doc.createElement("interface");
      iface.setAttribute("type", "network");
      const model = doc.createElement("model");
      model.setAttribute("type", "virtio");
      iface.append(doc.createElement("source"), model);
      devices.insertBefore(iface, firstOf(devices, ["serial", "console", "input", "graphics", "video", "memballoon"]));
    }
    ensure(iface, "source", iface.firstChild).setAttribute("network", net);
  });
  for (const extra of ifaces.slice(fields.networks.length)) extra.remove();
  return domain;
}

function firstOf(parent, names) { return [...parent.children].find((c) => names.includes(c.localName)) || null; }

function freeTarget(devices, prefix) {
  const used = new Set([...devices.getElementsByTagName("target")].map((t) => t.getAttribute("dev")));
  for (const c of "abcdefghijklmnopqrstuvwxyz") if (!used.has(prefix + c)) return prefix + c;
  return `${prefix}z`;
}

/** Attach a disk file of the VM folder to the definition (virtio). */
export function withDisk(original, path, format) {
  const domain = plainDomain(original);
  const doc = domain.ownerDocument;
  const devices = ensure(domain, "devices");
  const disk = doc.createElement("disk");
  disk.setAttribute("type", "file");
  disk.setAttribute("device", "disk");
  const driver = doc.createElement("driver");
  driver.setAttribute("name", "qemu");
  driver.setAttribute("type", format || "qcow2");
  const source = doc.createElement("source");
  source.setAttribute("file", path);
  const target = doc.createElement("target");
  target.setAttribute("dev", freeTarget(devices, "vd"));
  target.setAttribute("bus", "virtio");
  disk.append(driver, source, target);
  devices.insertBefore(disk, firstOf(devices, ["disk", "controller", "interface", "serial", "console", "input", "graphics", "video"]));
  return domain;
}

/** The disk files a definition uses. */
export function diskSources(domain) {
  return [...domain.getElementsByTagName("disk")]
    .filter((d) => d.getAttribute("device") !== "cdrom")
    .map((d) => (child(d, "source") || { getAttribute: () => null }).getAttribute("file"))
    .filter(Boolean);
}
