// Alloc with memory or vCPUs: the hypervisor allocates a blank VM, then its
// definition is changed as soon as the new entity answers (its full JID comes
// from rostervm, or the
// hypervisor's node; the entity takes a moment to log in).
import { NS } from "./entity-context.js";
import { plainDomain, readFields, writeFields } from "./domain-xml.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function configureNewVm(ctx, bare, { memoryMiB, vcpus }, tries = 60) {
  let last = null;
  // a VM's resource is its hypervisor's JID node (reference §1); rostervm says so too, for who holds it
  let full = `${bare}/${ctx.jid.split("@")[0]}`;
  for (let i = 0; i < tries; i += 1) {
    if (ctx.may("rostervm")) {
      const found = (await ctx.items(NS.HV, "rostervm")).find((it) => it.textContent.split("/")[0] === bare);
      full = found && found.textContent.includes("/") ? found.textContent : null;
    }
    if (full) {
      try {
        const el = (await ctx.session.acpItems(full, NS.VM, "xmldesc"))[0];
        if (el && el.localName === "domain") {
          const domain = plainDomain(el);
          const f = readFields(domain);
          if (memoryMiB) f.memoryMiB = memoryMiB;
          if (vcpus) f.vcpus = vcpus;
          await ctx.session.acp(full, NS.DEF, "define", {}, "set", [writeFields(domain, f)]);
          return;
        }
      } catch (e) {
        if (e.condition !== "service-unavailable" && e.condition !== "recipient-unavailable" &&
            e.condition !== "item-not-found" && e.condition !== "timeout") throw e;
        last = e;
      }
    }
    await sleep(500);
  }
  throw last || new Error(`${bare} did not come online`);
}
