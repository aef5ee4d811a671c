// How convert gets through MoE checkpoints fast without changing a byte: expert tensors read
// many at once (adjacent ones in one read), a batch of experts per transform call, and the
// block-scale scans run beside the conversion (ScaleScans) instead of all before it.
import { cp, open, readdir, readFile, rm, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { openCheckpoint, readTensor } from '../src/checkpoint/model-dir.js';
import { mapLimited, readSmallTensors, readTensorsInto, tensorsBytes } from '../src/checkpoint/read-batch.js';
import { ScaleScans } from '../src/plan/scale-scans.js';
import { addon } from '../src/transform/addon.js';
import { generateModel } from '../tools/fixture-generator/generate.js';
import { cli, f32Scalar, MODELS, mutateModel, tempDir } from './helpers/models.js';
import { planConversion } from '../src/plan/plan.js';
import { requireNvfp4 } from '../src/checkpoint/flavour.js';

let work: string;
beforeAll(async () => {
  work = await tempDir();
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('readTensorsInto', () => {
  it('fills one buffer with the tensors named, in the order asked, adjacent ones in one read', async () => {
    const ckpt = await openCheckpoint(join(MODELS, 'qwen3-moe-tiny-modelopt'));
    try {
      const shard = ckpt.shards[0]!;
      const inFileOrder = ckpt.readers.get(shard)!.names();
      // A run of 5 adjacent tensors, one far away, and the run's first again out of order.
      const names = [inFileOrder[7]!, ...inFileOrder.slice(1, 6), inFileOrder.at(-1)!];
      const target = Buffer.alloc(tensorsBytes(ckpt, names));
      const views = await readTensorsInto(ckpt, names, target);
      expect(views).toHaveLength(names.length);
      for (const [i, n] of names.entries()) expect(views[i]!.equals(await readTensor(ckpt, n)), n).toBe(true);
      expect(views.reduce((a, v) => a + v.length, 0)).toBe(target.length);
    } finally {
      await ckpt.close();
    }
  });

  it('refuses tensors that are not back to back, and a buffer of the wrong size', async () => {
    const ckpt = await openCheckpoint(join(MODELS, 'qwen3-moe-tiny-modelopt'));
    try {
      const reader = ckpt.readers.get(ckpt.shards[0]!)!;
      const [a, , c] = reader.names();
      const size = tensorsBytes(ckpt, [a!, c!]);
      await expect(reader.readAdjacentInto([a!, c!], Buffer.alloc(size))).rejects.toThrow(/does not follow/);
      await expect(reader.readAdjacentInto([a!], Buffer.alloc(tensorsBytes(ckpt, [a!]) + 1))).rejects.toThrow(/adjacent tensors hold/);
    } finally {
      await ckpt.close();
    }
  });
});

describe('reading many tensors with few native calls (readRanges)', () => {
  it('reads every range asked, in one pool call, and rejects a read past the end or on a bad descriptor', async () => {
    const path = join(MODELS, 'qwen3-moe-tiny-modelopt', 'config.json');
    const bytes = await readFile(path);
    const handle = await open(path);
    try {
      const target = Buffer.alloc(12);
      await addon().readRanges(handle.fd, target, new Float64Array([0, 5, 0, 3, 7, 5]));
      expect(target.equals(Buffer.concat([bytes.subarray(0, 5), bytes.subarray(3, 10)]))).toBe(true);
      await expect(addon().readRanges(handle.fd, target, new Float64Array([bytes.length - 2, 4, 0]))).rejects.toThrow(/end of file at byte \d+, 2 bytes short/);
      expect(() => addon().readRanges(handle.fd, target, new Float64Array([0, 13, 0]))).toThrow(/does not fit the target's 12 bytes/);
      expect(() => addon().readRanges(handle.fd, target, new Float64Array([0, 1]))).toThrow(/triples/);
      expect(() => addon().readRanges(handle.fd, target, new Float64Array([-1, 1, 0]))).toThrow(/position must be a non-negative safe integer/);
    } finally {
      await handle.close();
    }
    // A descriptor no process has open (far above any limit on open files).
    await expect(addon().readRanges(2 ** 30, Buffer.alloc(1), new Float64Array([0, 1, 0]))).rejects.toThrow(/Bad file descriptor/);
  });

  it('a batch of expert tensors is a few native calls, not one read each', async () => {
    const ckpt = await openCheckpoint(join(MODELS, 'qwen3-moe-tiny-modelopt'));
    const spy = vi.spyOn(addon(), 'readRanges');
    try {
      const names = [...ckpt.tensors.keys()].filter((n) => /experts\.\d+\.(gate|up)_proj\.weight$/.test(n));
      expect(names.length).toBeGreaterThan(8);
      const target = Buffer.alloc(tensorsBytes(ckpt, names));
      const views = await readTensorsInto(ckpt, names, target, 4);
      for (const [i, n] of names.entries()) expect(views[i]!.equals(await readTensor(ckpt, n)), n).toBe(true);
      // At most `limit` calls, plus one where the batch crosses into another shard.
      expect(spy.mock.calls.length).toBeGreaterThan(0);
      expect(spy.mock.calls.length).toBeLessThanOrEqual(4 + ckpt.shards.length - 1);
    } finally {
      spy.mockRestore();
      await ckpt.close();
    }
  });

  it('closing a reader waits for the native reads that use its descriptor', async () => {
    const ckpt = await openCheckpoint(join(MODELS, 'qwen3-moe-tiny-modelopt'));
    const reader = ckpt.readers.get(ckpt.shards[0]!)!;
    const name = reader.names().at(-1)!;
    const { position, bytes } = reader.adjacentRange([name]);
    const order: string[] = [];
    const read = reader.withFd((fd) => addon().readRanges(fd, Buffer.alloc(bytes), new Float64Array([position, bytes, 0])))!;
    void read.then(() => order.push('read'));
    await ckpt.close().then(() => order.push('closed'));
    expect(order).toEqual(['read', 'closed']);
    expect(reader.withFd(async () => undefined)).toBeUndefined();
  });
});

describe('readSmallTensors', () => {
  it('reads every scalar of the MoE fixture, in the order asked, as one read per tensor would', async () => {
    const ckpt = await openCheckpoint(join(MODELS, 'qwen3-moe-tiny-modelopt'));
    try {
      const names = [...ckpt.tensors.keys()].filter((n) => /(weight_scale_2|input_scale)$/.test(n)).reverse();
      expect(names.length).toBeGreaterThan(20);
      const got = await readSmallTensors(ckpt, names, 16);
      for (const [i, n] of names.entries()) expect(got[i]!.equals(await readTensor(ckpt, n)), n).toBe(true);
    } finally {
      await ckpt.close();
    }
  });

  it('names the first tensor in order that cannot be read when a shard is cut short', async () => {
    const dir = join(work, 'cut');
    await cp(join(MODELS, 'qwen3-moe-tiny-modelopt'), dir, { recursive: true });
    const ckpt = await openCheckpoint(dir);
    try {
      const shard = ckpt.shards.at(-1)!;
      const reader = ckpt.readers.get(shard)!;
      const scalars = reader.names().filter((n) => n.endsWith('weight_scale_2'));
      const cutAt = ckpt.tensors.get(scalars.at(-3)!)!.entry; // the last three are past the end
      await truncate(join(dir, shard), reader.header.dataStart + cutAt.begin);
      // Asked for in reverse: a batched read fails on the whole run; the first asked is named.
      await expect(readSmallTensors(ckpt, [scalars[0]!, ...scalars.slice(-3).reverse()], 16)).rejects.toThrow(
        new RegExp(`${scalars.at(-1)!.replace(/\./g, '\\.')}.*unexpected end of file`),
      );
    } finally {
      await ckpt.close();
    }
  });
});

describe('mapLimited', () => {
  it('keeps at most `limit` calls in flight and the results in order', async () => {
    let inFlight = 0;
    let most = 0;
    const out = await mapLimited([5, 1, 4, 2, 3, 0], 2, async (x) => {
      most = Math.max(most, ++inFlight);
      await new Promise((r) => setTimeout(r, x));
      inFlight--;
      return x * 10;
    });
    expect(out).toEqual([50, 10, 40, 20, 30, 0]);
    expect(most).toBe(2);
  });

  it('throws the first failing item in order, whichever fails first in time', async () => {
    const failedInTime: number[] = [];
    // Item 3 fails at once, item 1 late: a serial loop would report item 1, and so must this.
    const run = mapLimited([0, 1, 2, 3, 4, 5], 4, async (x) => {
      await new Promise((r) => setTimeout(r, x === 1 ? 40 : 1));
      if (x === 1 || x === 3) {
        failedInTime.push(x);
        throw new Error(`item ${x}`);
      }
      return x;
    });
    await expect(run).rejects.toThrow('item 1');
    expect(failedInTime).toEqual([3, 1]);
  });
});

describe('ScaleScans', () => {
  it('runs the scans of the modules named first first, and ready() waits for only those', async () => {
    const scans = new ScaleScans();
    const ran: string[] = [];
    const mods = ['a', 'b', 'c', 'd'].map((name) => ({ name }));
    let releaseD!: () => void;
    const dBlocked = new Promise<void>((r) => (releaseD = r));
    for (const m of mods) {
      scans.add([m], async () => {
        ran.push(m.name);
        if (m.name === 'd') await dBlocked;
      });
    }
    scans.start(1, [mods[3]!, mods[2]!]);
    const cReady = scans.ready([mods[2]!]);
    releaseD();
    await cReady;
    expect(ran.slice(0, 2)).toEqual(['d', 'c']);
    await scans.runAll(1);
    expect(ran.sort()).toEqual(['a', 'b', 'c', 'd']);
  });

  it('after a failure starts nothing more: every later scan, and runAll, fail with that error', async () => {
    const scans = new ScaleScans();
    const mods = [{}, {}, {}];
    const ran: number[] = [];
    mods.forEach((m, i) =>
      scans.add([m], async () => {
        ran.push(i);
        if (i === 1) throw new Error('bad block scale');
      }),
    );
    scans.start(1);
    await expect(scans.ready([mods[0]!])).resolves.toBeUndefined();
    await expect(scans.ready([mods[2]!])).rejects.toThrow('bad block scale');
    await expect(scans.runAll(1)).rejects.toThrow('bad block scale');
    expect(ran).toEqual([0, 1]);
  });
});

describe('ScaleScans, started before every scan is registered', () => {
  it('runs a scan registered later without another start, lower ranks first, and settled() waits for it', async () => {
    const scans = new ScaleScans();
    const ran: string[] = [];
    let releaseA!: () => void;
    const aBlocked = new Promise<void>((r) => (releaseA = r));
    const add = (name: string, rank: number, block?: Promise<void>) =>
      scans.add(
        [{ name }],
        async () => {
          ran.push(name);
          await block;
        },
        rank,
      );
    scans.start(1);
    add('a', 0, aBlocked); // starts at once: a lane is free
    add('late', 2);
    add('first', 1); // registered after 'late', ranked before it
    add('first too', 1);
    expect(ran).toEqual(['a']);
    const settled = scans.settled();
    releaseA();
    await settled;
    expect(ran).toEqual(['a', 'first', 'first too', 'late']);
  });
});

describe('planConversion, failing after its scans started', () => {
  it('rejects only once no scan reads the checkpoint any more', async () => {
    // A bad input scale of the last layer's experts: found while placing, after every scan is registered.
    const model = join(work, 'late-failure');
    const bad = 'model.layers.1.mlp.experts.2.down_proj.input_scale';
    await mutateModel(join(MODELS, 'qwen3-moe-tiny-modelopt'), model, (name, t) => (name === bad ? f32Scalar(NaN) : t));
    const native = addon();
    let running = 0;
    let calls = 0;
    const track = <T>(p: Promise<T>) => {
      calls++;
      running++;
      return p.finally(() => running--);
    };
    const readRanges = native.readRanges.bind(native);
    const scan = native.scanScalesAsync.bind(native);
    const spies = [
      vi.spyOn(native, 'readRanges').mockImplementation((fd, target, ranges) => track(readRanges(fd, target, ranges))),
      // Slow scans: still running when the planning fails.
      vi.spyOn(native, 'scanScalesAsync').mockImplementation((data) => track(new Promise((r) => setTimeout(r, 20)).then(() => scan(data)))),
    ];
    const ckpt = await openCheckpoint(model);
    try {
      const planning = planConversion(ckpt, requireNvfp4(ckpt), { layout: 'v2', dtype: 'bfloat16', deferScans: true });
      await expect(planning).rejects.toThrow(`tensor ${bad}: input scale NaN is not a finite number >= 0`);
      expect(calls).toBeGreaterThan(0); // the scans had started
      expect(running).toBe(0);
      const after = calls;
      await new Promise((r) => setTimeout(r, 20));
      expect(calls).toBe(after); // and none starts after the rejection
    } finally {
      spies.forEach((s) => s.mockRestore());
      await ckpt.close();
    }
  });
});

describe('MoE stacks in batches of experts', () => {
  it('give the same bytes with one expert per call, a few, and all of them (CPU)', async () => {
    const model = join(work, 'moe-20');
    // Split globals: gate and up of each expert differ, so the scales of one are re-encoded in the batch.
    await generateModel(model, { arch: 'qwen3-moe', flavour: 'modelopt', experts: 20, shards: 2, splitGlobals: true });
    const shardBytes = async (dir: string) => {
      const files = (await readdir(dir)).filter((f) => f.endsWith('.safetensors')).sort();
      return Promise.all(files.map(async (f) => [f, await readFile(join(dir, f))] as const));
    };
    const outputs = [];
    // 1 byte: one expert per call; 20,000: about two (an expert's w13 weight is 8 KiB of input and of output); default: all 20.
    for (const batch of ['1', '20000', '']) {
      const out = join(work, `out-${batch || 'default'}`);
      const r = cli(['convert', model, '-o', out, '--device', 'cpu', '--no-checksums', '-q'], { MARLIN_FP4_BATCH_BYTES: batch });
      expect(r.code, r.stderr).toBe(0);
      outputs.push(await shardBytes(out));
    }
    expect(outputs[0]!.length).toBe(2);
    for (const o of outputs.slice(1)) {
      expect(o.map(([f]) => f)).toEqual(outputs[0]!.map(([f]) => f));
      o.forEach(([f, bytes], i) => expect(bytes.equals(outputs[0]![i]![1]), f).toBe(true));
    }
  });
});

describe('the profile (MARLIN_FP4_PROFILE=1)', () => {
  it("has a timeline in which every shard's scans come before its writes, and the checksums before the commit", async () => {
    const model = join(work, 'moe-profiled');
    await generateModel(model, { arch: 'qwen3-moe', flavour: 'modelopt', experts: 8, shards: 3 });
    const r = cli(['convert', model, '-o', join(work, 'out-profiled'), '--device', 'cpu', '-q'], { MARLIN_FP4_PROFILE: '1' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/main thread busy +\d+\.\d+ s {2}\(\d+% of the process's/);
    const events = [...r.stderr.matchAll(/^ +(\d+\.\d+) {2}(.+)$/gm)].map(([, t, what]) => ({ t: Number(t), what: what! }));
    const at = (what: string) => {
      const i = events.findIndex((e) => e.what === what);
      expect(i, `${what} in the timeline:\n${r.stderr}`).toBeGreaterThanOrEqual(0);
      return i;
    };
    expect(events.map((e) => e.t)).toEqual(events.map((e) => e.t).sort((a, b) => a - b));
    expect(at('checkpoint opened')).toBeLessThan(at('planned'));
    const shards = (await readdir(model)).filter((f) => f.endsWith('.safetensors')).sort();
    expect(shards).toHaveLength(3);
    for (const s of shards) {
      expect(at('planned')).toBeLessThan(at(`${s}: scans ready, writing starts`));
      expect(at(`${s}: scans ready, writing starts`)).toBeLessThan(at(`${s}: last write done`));
      expect(at(`${s}: last write done`)).toBeLessThan(at(`${s}: done (hashed)`));
      expect(at(`source ${s} hashed`)).toBeLessThan(at('every checksum known'));
    }
    expect(at('every checksum known')).toBeLessThan(at('output committed'));
  });
});
