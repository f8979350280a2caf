// Alloc with memory or vCPUs: the hypervisor allocates a blank VM, then its
// definition is changed as soon as the new entity answers (its full JID comes
// from rostervm; it takes a moment to log in).
import { NS } from "./entity-context.js";
import { plainDomain, readFields, writeFields } from "./domain-xml.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function configureNewVm(ctx, bare, { memoryMiB, vcpus }, tries = 60) {
  let last = null;
  for (let i = 0; i < tries; i += 1) {
    const items = await ctx.items(NS.HV, "rostervm");
    const found = items.find((it) => it.textContent.split("/")[0] === bare);
    if (found && found.textContent.includes("/")) {
      try {
        const el = (await ctx.session.acpItems(found.textContent, NS.VM, "xmldesc"))[0];
        if (el && el.localName === "domain") {
          const domain = plainDomain(el);
          const f = readFields(domain);
          if (memoryMiB) f.memoryMiB = memoryMiB;
          if (vcpus) f.vcpus = vcpus;
          await ctx.session.acp(found.textContent, NS.DEF, "define", {}, "set", [writeFields(domain, f)]);
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
