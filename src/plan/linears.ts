// Finds the quantized linears of a checkpoint from its tensors (any prefix holding the NVFP4
// triple), not from a list of architectures, and groups MoE experts into stacks.
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { TransformError } from '../transform/marlin.js';
import { readTensorInto, type Checkpoint, type TensorRef } from '../checkpoint/model-dir.js';
import { isIgnored, type Flavour } from '../checkpoint/flavour.js';
import type { ExpertRole } from '../format/moe.js';

export interface LinearSource {
  prefix: string;
  weight: string;
  scale: string;
  /** The global scale's tensor (NVFP4); MXFP4 has none. */
  global?: string;
  /** compressed-tensors stores 1 / weight_scale_2. */
  globalReciprocal: boolean;
  inputScale?: string;
  inputReciprocal: boolean;
  bias?: string;
  /** Input tensors that belong to this linear (not copied under their own names). */
  members: string[];
  /**
   * Where this linear sits when its tensors hold every expert of a layer along a leading
   * dimension (gpt-oss's `…_blocks` [E, N, K/32, 16] and `…_scales` [E, N, K/32]): expert
   * `index` of `count`, i.e. that contiguous 1/count of each tensor's bytes. Absent: the
   * tensors are this linear's alone.
   */
  slice?: { index: number; count: number };
}

/** A linear's bytes of its weight or scale tensor: the whole tensor, or its expert's slice. */
export async function readLinearTensor(ckpt: Checkpoint, lin: LinearSource, which: 'weight' | 'scale'): Promise<Buffer> {
  const name = lin[which];
  const e = ckpt.tensors.get(name)!.entry;
  const { begin, end } = sliceRange(lin, e.end - e.begin);
  const out = Buffer.alloc(end - begin);
  await readTensorInto(ckpt, name, begin, out);
  return out;
}

/** Byte range [begin, end) of a linear's part of a tensor of `bytes` bytes (see LinearSource.slice). */
export function sliceRange(lin: Pick<LinearSource, 'slice'>, bytes: number): { begin: number; end: number } {
  if (!lin.slice) return { begin: 0, end: bytes };
  const per = bytes / lin.slice.count;
  return { begin: per * lin.slice.index, end: per * (lin.slice.index + 1) };
}

export interface ExpertGroup {
  /** The experts' prefix Q, e.g. model.layers.3.mlp.experts */
  prefix: string;
  /** experts[e] = its three linears */
  experts: Record<ExpertRole, LinearSource>[];
}

export interface FoundLinears {
  dense: LinearSource[];
  groups: ExpertGroup[];
  /** Quantized modules on the ignore list: copied unchanged, as the list asks. */
  ignored: string[];
}

const NAMES = {
  modelopt: { weight: 'weight', global: 'weight_scale_2', input: 'input_scale' },
  'compressed-tensors': { weight: 'weight_packed', global: 'weight_global_scale', input: 'input_global_scale' },
} as const;

const EXPERT = /^(.+\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)$/;
const ROLE: Record<string, ExpertRole> = { gate_proj: 'gate', w1: 'gate', up_proj: 'up', w3: 'up', down_proj: 'down', w2: 'down' };

/**
 * "<shard file>: tensor <name>" for messages. A missing tensor is placed in the shard of a
 * sibling (`near`) that exists, which is where a user would look for it.
 */
export function where(ckpt: Checkpoint, tensor: string, near?: string): string {
  const ref = ckpt.tensors.get(tensor) ?? (near ? ckpt.tensors.get(near) : undefined);
  return ref ? `${join(ckpt.dir, ref.shard)}: tensor ${tensor}` : `${ckpt.dir}: tensor ${tensor}`;
}

/**
 * A transform's error (which names a tensor) as the user's error, with the shard file added;
 * anything else is rethrown as it is.
 */
export function asInputError(ckpt: Checkpoint, e: unknown): never {
  if (e instanceof TransformError) throw new InputError(`${where(ckpt, e.tensor)}: ${e.reason}`);
  throw e;
}

function expect(ckpt: Checkpoint, ref: TensorRef | undefined, name: string, what: string, ok: boolean, reason: string, near: string): TensorRef {
  if (!ref) throw new InputError(`${where(ckpt, name, near)}: missing (${what})`);
  if (!ok) throw new InputError(`${where(ckpt, name)}: ${reason}`);
  return ref;
}

/**
 * The quantized linears of a checkpoint. A missing or malformed piece is an InputError; with
 * `problems` given (inspect), its message is collected instead and that linear (or expert
 * group) is left out, so that every problem is seen in one run.
 */
export function findLinears(ckpt: Checkpoint, flavour: Flavour, problems?: string[]): FoundLinears {
  const names = NAMES[flavour.kind];
  const t = ckpt.tensors;
  // A prefix is a quantized linear if it has a block scale next to a packed weight or a global
  // scale; every other combination is checked so that a missing piece is an error, not a copy.
  const prefixes = new Set<string>();
  for (const name of t.keys()) {
    const m = /^(.*)\.(weight_scale|weight_scale_2|weight_global_scale|weight_packed|weight)$/.exec(name);
    if (!m) continue;
    const p = m[1]!;
    const suffix = m[2]!;
    if (suffix === 'weight' && t.get(name)!.entry.dtype !== 'U8') continue;
    if (suffix === 'weight_scale' && !t.has(`${p}.${names.weight}`) && !t.has(`${p}.${names.global}`)) continue;
    prefixes.add(p);
  }

  const dense: LinearSource[] = [];
  const ignored: string[] = [];
  const grouped = new Map<string, Map<number, Partial<Record<ExpertRole, LinearSource>>>>();
  for (const p of [...prefixes].sort()) {
    try {
      const weight = `${p}.${names.weight}`;
      const scale = `${p}.weight_scale`;
      const global = `${p}.${names.global}`;
      if (isIgnored(flavour, p)) {
        ignored.push(p);
        continue;
      }
      const near = [weight, scale, global].find((n) => t.has(n))!;
      expect(ckpt, t.get(weight), weight, `the packed FP4 weight of ${p}`, t.get(weight)?.entry.dtype === 'U8',
        `dtype ${t.get(weight)?.entry.dtype} is not U8 (packed FP4)`, near);
      expect(ckpt, t.get(scale), scale, `the block scales of ${p}`, t.get(scale)?.entry.dtype === 'F8_E4M3',
        `dtype ${t.get(scale)?.entry.dtype} is not F8_E4M3`, near);
      const g = t.get(global);
      expect(ckpt, g, global, `the global scale of ${p}`, g?.entry.dtype === 'F32' && (g.entry.shape.length === 0 || (g.entry.shape.length === 1 && g.entry.shape[0] === 1)),
        `global scale must be an F32 scalar, got ${g?.entry.dtype} [${g?.entry.shape.join(', ')}]`, near);
      const input = `${p}.${names.input}`;
      const lin: LinearSource = {
        prefix: p,
        weight,
        scale,
        global,
        globalReciprocal: flavour.kind === 'compressed-tensors',
        inputReciprocal: flavour.kind === 'compressed-tensors',
        members: [weight, scale, global],
      };
      if (t.has(input)) {
        const ie = t.get(input)!.entry;
        if (ie.dtype !== 'F32' || ie.shape.reduce((a, b) => a * b, 1) !== 1) {
          throw new InputError(`${where(ckpt, input)}: input scale must be an F32 scalar, got ${ie.dtype} [${ie.shape.join(', ')}]`);
        }
        lin.inputScale = input;
        lin.members.push(input);
      }
      if (t.has(`${p}.bias`)) {
        lin.bias = `${p}.bias`;
        lin.members.push(lin.bias);
      }
      const m = EXPERT.exec(p);
      if (m) {
        const experts = grouped.get(m[1]!) ?? new Map();
        grouped.set(m[1]!, experts);
        const e = Number(m[2]);
        const slot = experts.get(e) ?? {};
        experts.set(e, slot);
        const role = ROLE[m[3]!]!;
        if (slot[role]) throw new InputError(`${where(ckpt, weight)}: expert ${e} of ${m[1]} has two ${role} projections (${slot[role]!.prefix} and ${p})`);
        slot[role] = lin;
      } else {
        dense.push(lin);
      }
    } catch (e) {
      if (problems && e instanceof InputError) problems.push(e.message);
      else throw e;
    }
  }

  const groups: ExpertGroup[] = [];
  for (const [prefix, experts] of [...grouped].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    const count = Math.max(...experts.keys()) + 1;
    const list: Record<ExpertRole, LinearSource>[] = [];
    try {
      for (let e = 0; e < count; e++) {
        const slot = experts.get(e);
        for (const role of ['gate', 'up', 'down'] as const) {
          if (!slot?.[role]) throw new InputError(`${ckpt.dir}: ${prefix}: expert ${e} has no quantized ${role} projection (experts must be numbered 0..${count - 1}, each with gate, up and down)`);
        }
        list.push(slot as Record<ExpertRole, LinearSource>);
      }
    } catch (e) {
      if (problems && e instanceof InputError) {
        problems.push(e.message);
        continue;
      }
      throw e;
    }
    groups.push({ prefix, experts: list });
  }
  return { dense, groups, ignored };
}
