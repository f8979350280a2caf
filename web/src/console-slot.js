// The console's mount point in the VM page. The console module registers
// itself here (registerConsole); the VM page calls it with an empty
// <section id="console"> the first time the Console tab opens. The mount
// function may return a cleanup function, called when the page closes.
let mount = null;

export function registerConsole(fn) { mount = fn; }

export function mountConsole(slot, ctx) {
  if (!mount) {
    slot.append(document.createTextNode("The console is not part of this build."));
    return null;
  }
  return mount(slot, ctx);
}
