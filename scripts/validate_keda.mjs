// Validates KEDA objects against the ScaledObject CRD schema shipped by the pinned
// @kubernetes-models/keda package (installed by scripts/validate_deploy.sh into .tools/node).
// Reads a JSON array of objects on stdin; prints one line per object; exits 1 on any error.
//   node scripts/validate_keda.mjs < objects.json
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const modules = process.env.SLUICE_NODE_MODULES;
const require = createRequire(path.join(modules, "noop.js"));
const base = path.dirname(require.resolve("@kubernetes-models/keda/package.json"));
const { ScaledObject } = await import(path.join(base, "keda.sh/v1alpha1/ScaledObject.js"));
const kinds = { ScaledObject };

const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const obj of objects) {
  const name = `${obj.kind}/${obj.metadata?.name}`;
  const Model = kinds[obj.kind];
  if (!Model || obj.apiVersion !== Model.apiVersion) {
    console.log(`FAIL ${name}: no KEDA schema for ${obj.apiVersion} ${obj.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`ok   ${name} (keda.sh CRD schema)`);
  } catch (err) {
    console.log(`FAIL ${name}: ${err.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
