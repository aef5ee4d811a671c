// Bundles the command line (dist/cli/main.js and everything it imports, commander and zod
// included) into one file, dist/cli/main.bundle.js, which bin/marlin-fp4.js loads when it is
// there and not older than dist/cli/main.js. Node 20's ES module loader resolves, reads and
// links each file of dist/, zod and commander one by one: importing the command line took about 170 ms on
// the 2-core VM, the bundle about 86 ms (whitespace and syntax minified: V8 compiles less text;
// names are kept, so stack traces still name our functions). Run after tsc (npm run build:ts).
//
// esbuild comes with the test tools (vitest); where it is missing (an install without them),
// no bundle is made and the command line runs from dist/ as before.
import { existsSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const entry = join(root, 'dist', 'cli', 'main.js');
const outfile = join(root, 'dist', 'cli', 'main.bundle.js');

let esbuild;
try {
  esbuild = await import('esbuild');
} catch {
  rmSync(outfile, { force: true }); // never leave a bundle of older code behind
  console.log('bundle-cli: esbuild is not installed; the command line runs from dist/ unbundled');
  process.exit(0);
}
if (!existsSync(entry)) throw new Error(`bundle-cli: ${entry} is missing (run tsc first)`);
await esbuild.build({
  entryPoints: [entry],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: 'warning',
  // Loaded only when a Hub repo id is named (and large): stays a lazy import from node_modules.
  external: ['@huggingface/hub'],
  // commander is CommonJS: its require() calls need a require in the ES module bundle.
  banner: { js: "import { createRequire as __mfp4Require } from 'node:module'; const require = __mfp4Require(import.meta.url);" },
});
