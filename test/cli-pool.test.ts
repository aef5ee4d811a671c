// The command line runs with a 16-thread libuv pool (bin/marlin-fp4.js): reads, writes and
// native calls share it, and convert's and verify's lanes starve on the default four. Node
// sizes the pool once, when something first uses it, and its ES module loader already does
// for an ES module entry; this checks the size the real process got, by its thread count.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, tempDir } from './helpers/models.js';

let home: string;
beforeAll(async () => {
  home = await tempDir();
});
afterAll(async () => {
  await rm(home, { recursive: true, force: true });
});

/**
 * Threads of the CLI while it waits on a Hub that never answers (all modules loaded, so the
 * pool is up; nothing else starts threads meanwhile).
 */
async function threadsWhileWaiting(env: Record<string, string>): Promise<number> {
  const sockets: Socket[] = [];
  const server = createServer((s) => sockets.push(s));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  const connected = new Promise<void>((resolve) => server.once('connection', () => resolve()));
  const child = spawn(process.execPath, [BIN, 'inspect', 'acme/stalled'], {
    env: { ...process.env, HF_ENDPOINT: `http://127.0.0.1:${port}`, HF_HOME: home, HF_TOKEN: '', ...env },
    stdio: 'ignore',
  });
  try {
    await connected;
    return readdirSync(`/proc/${child.pid}/task`).length;
  } finally {
    child.kill('SIGKILL');
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
}

describe('the CLI process', () => {
  const linux = existsSync('/proc/self/task');
  it.skipIf(!linux)('has 16 libuv pool threads by default, and the pool size the user sets (needs /proc: Linux)', async () => {
    const byDefault = await threadsWhileWaiting({});
    const four = await threadsWhileWaiting({ UV_THREADPOOL_SIZE: '4' });
    const twenty = await threadsWhileWaiting({ UV_THREADPOOL_SIZE: '20' });
    expect(byDefault - four).toBe(12);
    expect(twenty - byDefault).toBe(4);
  }, 30_000);
});
