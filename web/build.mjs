// Builds dist/: the bundled ES module (esbuild) next to index.html and app.css.
// No CDN at run time: everything the page loads comes from dist/.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";

const out = "dist";
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ["src/app.js"],
  bundle: true,
  format: "esm",
  target: ["chrome110", "firefox110", "safari16"],
  minify: true,
  sourcemap: true,
  outfile: `${out}/app.js`,
  logLevel: "warning",
});
for (const f of ["index.html", "app.css"]) copyFileSync(f, `${out}/${f}`);
console.log(`web: built ${out}/`);
