#!/usr/bin/env node
// libuv's pool (4 threads by default) runs both the file reads and the native calls, each of
// which holds a thread until it is done: verify's lanes (four on the GPU) would leave no thread
// for the reads that should overlap them, and convert's shards in flight queue their reads,
// writes and GPU calls behind each other. The size must be set before anything starts the
// pool. Node 20's ES module loader reads the entry file through the pool, so an ES module entry
// is too late: this file is CommonJS (bin/package.json), loaded without the pool, and imports
// the ES modules only after setting it. A value the user set is kept.
process.env.UV_THREADPOOL_SIZE ??= '16';
// The bundled command line (tools/bundle-cli.mjs) loads in half the time of dist/'s modules
// and their dependencies; it is used only when it is not older than dist/cli/main.js, so that a tsc build
// without a bundle never runs older code. MARLIN_FP4_NO_BUNDLE=1 runs dist/ (tests compare both).
const { statSync } = require('node:fs');
const { join } = require('node:path');
const { pathToFileURL } = require('node:url');
const dist = join(__dirname, '..', 'dist', 'cli');
function entry() {
  if (process.env.MARLIN_FP4_NO_BUNDLE === '1') return 'main.js';
  try {
    return statSync(join(dist, 'main.bundle.js')).mtimeMs >= statSync(join(dist, 'main.js')).mtimeMs ? 'main.bundle.js' : 'main.js';
  } catch {
    return 'main.js';
  }
}
import(pathToFileURL(join(dist, entry())).href).then(async ({ main }) => {
  process.exitCode = await main(process.argv);
});
