#!/usr/bin/env node
// libuv's pool (4 threads by default) runs both the file reads and the native calls, each of
// which holds a thread until it is done: verify's lanes (four on the GPU) would leave no thread
// for the reads that should overlap them, and convert's shards in flight queue their reads,
// writes and GPU calls behind each other. The size must be set before anything starts the
// pool. Node 20's ES module loader reads the entry file through the pool, so an ES module entry
// is too late: this file is CommonJS (bin/package.json), loaded without the pool, and imports
// the ES modules only after setting it. A value the user set is kept.
process.env.UV_THREADPOOL_SIZE ??= '16';
import('../dist/cli/main.js').then(async ({ main }) => {
  process.exitCode = await main(process.argv);
});
