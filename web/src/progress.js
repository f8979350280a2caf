// A progress bar fed by pushes: the agent pushes percentages for a clone's copy
// (hypervisor "cloning"), a disk convert or golden copy (disk "progress"), and
// shows a migration as the presence status "Migrating - N%".
import { h } from "./dom.js";

export class ProgressBar {
  constructor(label) {
    this.bar = h("progress", { max: "100", value: "0", "aria-label": label });
    this.text = h("span", { class: "progress-text" });
    this.el = h("div", { class: "progress", role: "group", "aria-label": label, hidden: true }, this.text, this.bar);
  }

  set(text, percent) {
    this.el.hidden = false;
    this.text.textContent = `${text}: ${percent}%`;
    this.bar.value = percent;
    this.el.dataset.percent = String(percent);
  }

  done(text) {
    this.bar.value = 100;
    this.text.textContent = text;
    this.el.hidden = false;
    this.el.dataset.percent = "100";
  }
}

/** The percentage of a "Migrating - 40%" status, or null. */
export function migrationPercent(status) {
  const m = /^Migrating - (\d+)%$/.exec(status || "");
  return m ? Number(m[1]) : null;
}
