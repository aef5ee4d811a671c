#!/usr/bin/env node
// libuv's pool (4 threads by default) runs both the file reads and the native calls, each of
// which holds a thread until it is done: verify's lanes (four on the GPU) would leave no thread
// for the reads that should overlap them. Set before anything starts the pool (the import
// below is dynamic for that reason); a value the user set is kept.
process.env.UV_THREADPOOL_SIZE ??= '16';
const { main } = await import('../dist/cli/main.js');

process.exitCode = await main(process.argv);
