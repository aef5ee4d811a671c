// The package's own directory (where package.json and native/ are), found from this module's
// location by walking up to the package.json named marlin-fp4: the same answer from src/
// (tests), dist/ (tsc's output) and dist/cli/main.bundle.js (the bundled command line), whose
// modules sit at different depths.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** What the package's own package.json says (read once, where the root was found). */
export interface PackageJson {
  name: string;
  version: string;
}

function findRoot(start: string): { dir: string; json: PackageJson } {
  for (let dir = start; ; dir = dirname(dir)) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      const json = JSON.parse(readFileSync(pkg, 'utf8')) as PackageJson;
      if (json.name === 'marlin-fp4') return { dir, json };
    }
    if (dirname(dir) === dir) throw new Error(`marlin-fp4's package.json not found above ${start}`);
  }
}

const found = findRoot(dirname(fileURLToPath(import.meta.url)));
export const PACKAGE_ROOT = found.dir;
export const PACKAGE_JSON: PackageJson = found.json;
