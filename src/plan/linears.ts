// Finds the quantized linears of a checkpoint by what its tensors are, not by one naming
// scheme: every U8 tensor is packed FP4 and must have F8_E4M3 block scales beside it
// (`P.weight` + `P.weight_scale`, or a parameter X not called weight + `X_weight_scale`),
// 2-D (one linear) or 3-D (a batch of experts, stored N-major or K-major). Experts are
// grouped into stacks. Invariant: a packed tensor or block scale that cannot be placed is an
// error naming it, never a copy.
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { TransformError } from '../transform/marlin.js';
import { readTensorInto, type Checkpoint, type TensorRef } from '../checkpoint/model-dir.js';
import { isIgnored, layerScheme, NVFP4_ALGOS, type Flavour } from '../checkpoint/flavour.js';
import type { ExpertRole } from '../format/moe.js';

/**
 * Where one linear sits inside tensors that hold more than it (3-D expert tensors): its
 * expert along the leading dimension, and its rows of N within that expert. Weight and
 * block scales share the view.
 */
export interface TensorView {
  experts: number;
  expert: number;
  /**
   * Stored K-major: per expert U8 [K/2, Nt] and scales [K/16, Nt] (Llama-4's fused experts;
   * the nibble pairs still run along K, so a byte transpose gives section 1's [Nt, K/2]);
   * otherwise N-major [Nt, K/2] and [Nt, K/16].
   */
  kMajor: boolean;
  /** This linear's first row of the expert's Nt output rows. */
  row0: number;
  /** Nt: the expert's output rows in the tensor (2I for a fused gate_up tensor). */
  rowsTotal: number;
}

export interface LinearSource {
  /** The module's name in messages: a dense linear's prefix (also its output prefix). */
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
  /** N (output features) and K (input features) of this linear. */
  n: number;
  k: number;
  /** Absent: the weight is a 2-D [N, K/2] tensor of its own. */
  view?: TensorView;
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

/** One expert's projections; gate is absent in a non-gated group. */
export type ExpertParts = Partial<Record<ExpertRole, LinearSource>>;

export interface ExpertGroup {
  /** The experts' prefix Q, e.g. model.layers.3.mlp.experts */
  prefix: string;
  /** Gated (gate, up, down: SwiGLU) or non-gated (up, down: Nemotron-H's relu²). */
  gated: boolean;
  /** experts[e] = its linears */
  experts: ExpertParts[];
}

export interface FoundLinears {
  dense: LinearSource[];
  groups: ExpertGroup[];
  /** Always empty now: a packed module on the exclude list is an error (it cannot be copied). */
  ignored: string[];
}

/** An expert's part that the group's stacks need (its absence was refused by findLinears). */
export function expertPart(ex: ExpertParts, role: ExpertRole): LinearSource {
  const lin = ex[role];
  if (!lin) throw new Error(`internal: expert has no ${role} projection`);
  return lin;
}

/** Every source linear of a group, expert by expert. */
export function groupLinears(g: ExpertGroup): LinearSource[] {
  return g.experts.flatMap((ex) => (['gate', 'up', 'down'] as const).flatMap((r) => (ex[r] ? [ex[r]] : [])));
}

const NAMES = {
  modelopt: { weight: 'weight', global: 'weight_scale_2', input: 'input_scale' },
  'compressed-tensors': { weight: 'weight_packed', global: 'weight_global_scale', input: 'input_global_scale' },
} as const;

const EXPERT = /^(.+\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)$/;
/** An expert projection's role by its module name (Qwen/Llama `*_proj`, Mixtral `w1/w3/w2`). */
export const ROLE: Record<string, ExpertRole> = { gate_proj: 'gate', w1: 'gate', up_proj: 'up', w3: 'up', down_proj: 'down', w2: 'down' };
/** 3-D tensors holding gate and up of every expert (gate rows first, as Llama-4's chunk(2) splits them). */
const FUSED_GATE_UP = new Set(['gate_up_proj', 'w13']);

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

const fmt = (shape: readonly number[]) => `[${shape.join(', ')}]`;

/** A U8 tensor that is packed FP4 (U8 scales, e.g. MXFP8's E8M0 `weight_scale`, are not). */
export function isPackedFp4(name: string, dtype: string): boolean {
  return dtype === 'U8' && !/scales?$/.test(name);
}

/** An F8_E4M3 tensor named as block scales (FP8 layers' per-tensor `weight_scale` is F32). */
export function isBlockScale(name: string, dtype: string): boolean {
  return dtype === 'F8_E4M3' && /(\.|_)weight_scale$/.test(name);
}

/** The companion names of a packed tensor: `P.weight` → `P.weight_scale`…; X → `X_weight_scale`…. */
function companions(name: string, flavour: Flavour) {
  const names = NAMES[flavour.kind];
  const suffix = `.${names.weight}`;
  if (name.endsWith(suffix)) {
    const m = name.slice(0, -suffix.length);
    return { module: m, scale: `${m}.weight_scale`, global: `${m}.${names.global}`, input: `${m}.${names.input}`, bias: `${m}.bias` as string | undefined };
  }
  const g = flavour.kind === 'modelopt' ? 'weight_scale_2' : 'weight_global_scale';
  const i = flavour.kind === 'modelopt' ? 'input_scale' : 'input_global_scale';
  return { module: name, scale: `${name}_weight_scale`, global: `${name}_${g}`, input: `${name}_${i}`, bias: undefined as string | undefined };
}

/** The packed tensor a block-scale tensor belongs to (the inverse of companions). */
function packedOf(scale: string, flavour: Flavour): string {
  return scale.endsWith('.weight_scale') ? `${scale.slice(0, -'.weight_scale'.length)}.${NAMES[flavour.kind].weight}` : scale.slice(0, -'_weight_scale'.length);
}

/**
 * Runs a finding step: its InputError is thrown, or, with `problems` given (inspect), collected
 * so that every problem is seen in one run.
 */
export function problemCollector(problems?: string[]): (run: () => void) => void {
  return (run) => {
    try {
      run();
    } catch (e) {
      if (problems && e instanceof InputError) problems.push(e.message);
      else throw e;
    }
  };
}

/**
 * The quantized linears of a checkpoint. A missing or malformed piece is an InputError; with
 * `problems` given (inspect), its message is collected instead and that linear (or expert
 * group) is left out, so that every problem is seen in one run.
 */
export function findLinears(ckpt: Checkpoint, flavour: Flavour, problems?: string[]): FoundLinears {
  const t = ckpt.tensors;
  const attempt = problemCollector(problems);

  // Block scales with no packed tensor beside them cannot be placed.
  for (const ref of [...t.values()].filter((r) => isBlockScale(r.name, r.entry.dtype)).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    attempt(() => {
      const packed = packedOf(ref.name, flavour);
      const w = t.get(packed);
      if (w?.entry.dtype === 'U8') return;
      const module = companions(packed, flavour).module;
      expect(ckpt, w, packed, `the packed FP4 weight of ${module}; its block scales ${ref.name} cannot be placed`, false, `dtype ${w?.entry.dtype} is not U8 (packed FP4)`, ref.name);
    });
  }

  const dense: LinearSource[] = [];
  const slots = new Map<string, Map<number, ExpertParts>>();
  const place = (group: string, e: number, role: ExpertRole, lin: LinearSource, tensor: string) => {
    const experts = slots.get(group) ?? new Map<number, ExpertParts>();
    slots.set(group, experts);
    const slot = experts.get(e) ?? {};
    experts.set(e, slot);
    if (slot[role]) throw new InputError(`${where(ckpt, tensor)}: expert ${e} of ${group} has two ${role} projections (${slot[role]!.prefix} and ${lin.prefix})`);
    slot[role] = lin;
  };

  const packed = [...t.values()].filter((r) => isPackedFp4(r.name, r.entry.dtype)).sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const ref of packed) {
    attempt(() => {
      const weight = ref.name;
      const c = companions(weight, flavour);
      const p = c.module;
      if (isIgnored(flavour, p)) {
        throw new InputError(`${where(ckpt, weight)}: ${p} is on the exclude/ignore list but its weight is packed NVFP4 (U8); it cannot be copied unconverted`);
      }
      const scheme = layerScheme(flavour, p);
      if (flavour.layers && !scheme) {
        throw new InputError(`${where(ckpt, weight)}: packed NVFP4 (U8), but quantized_layers has no entry for ${p}; marlin-fp4 will not guess its scheme`);
      }
      if (scheme && !NVFP4_ALGOS.includes(String(scheme.quant_algo).toUpperCase())) {
        throw new InputError(`${where(ckpt, weight)}: packed as U8, but quantized_layers gives ${p} quant_algo ${String(scheme.quant_algo)}; marlin-fp4 converts NVFP4 and W4A16_NVFP4 only and will not copy it unconverted`);
      }
      // The messages are built only for a tensor that fails (an MoE has tens of thousands that pass).
      const s = t.get(c.scale);
      if (s?.entry.dtype !== 'F8_E4M3') expect(ckpt, s, c.scale, `the block scales of ${p}`, false, `dtype ${s?.entry.dtype} is not F8_E4M3`, weight);
      const g = t.get(c.global);
      if (!(g?.entry.dtype === 'F32' && (g.entry.shape.length === 0 || (g.entry.shape.length === 1 && g.entry.shape[0] === 1)))) {
        expect(ckpt, g, c.global, `the global scale of ${p}`, false, `global scale must be an F32 scalar, got ${g?.entry.dtype} ${fmt(g?.entry.shape ?? [])}`, weight);
      }
      let inputScale: string | undefined;
      if (t.has(c.input)) {
        const ie = t.get(c.input)!.entry;
        if (ie.dtype !== 'F32' || ie.shape.reduce((a, b) => a * b, 1) !== 1) {
          throw new InputError(`${where(ckpt, c.input)}: input scale must be an F32 scalar, got ${ie.dtype} ${fmt(ie.shape)}`);
        }
        inputScale = c.input;
      }
      const reciprocal = flavour.kind === 'compressed-tensors';
      // Each LinearSource is written out field by field, not as `{ ...base, prefix, … }`: on
      // Node 20 a spread followed by more properties took about 10 µs an object, a third of
      // findLinears on an MoE of 37,000 tensors.
      const source = (prefix: string, n: number, k: number): LinearSource => ({
        weight,
        scale: c.scale,
        global: c.global,
        globalReciprocal: reciprocal,
        inputReciprocal: reciprocal,
        prefix,
        n,
        k,
        members: [weight, c.scale, c.global],
      });
      const ws = ref.entry.shape;
      const ss = s!.entry.shape;
      if (ws.length === 2) {
        const [n, halfK] = ws as [number, number];
        const k = 2 * halfK;
        // K % 16 is the shape rules' to report (naming the weight); here the scales' shape.
        if (k % 16 === 0 && (ss.length !== 2 || ss[0] !== n || ss[1] !== k / 16)) {
          throw new InputError(`${where(ckpt, c.scale)}: shape ${fmt(ss)} is not [N, K/16] = [${n}, ${k / 16}] (weight ${weight} is ${fmt(ws)})`);
        }
        const lin = source(p, n, k);
        if (inputScale) {
          lin.inputScale = inputScale;
          lin.members.push(inputScale);
        }
        if (c.bias && t.has(c.bias)) {
          lin.bias = c.bias;
          lin.members.push(c.bias);
        }
        const m = EXPERT.exec(p);
        if (m) place(m[1]!, Number(m[2]), ROLE[m[3]!]!, lin, weight);
        else dense.push(lin);
        return;
      }
      if (ws.length !== 3) throw new InputError(`${where(ckpt, weight)}: packed FP4 (U8) tensor of shape ${fmt(ws)}: not a 2-D linear [N, K/2] or 3-D experts; it cannot be placed`);
      // 3-D: a batch of experts. Orientation from the shapes (the two cases cannot both fit).
      const [E, a, b] = ws as [number, number, number];
      let n: number;
      let k: number;
      let kMajor: boolean;
      if (ss.length === 3 && ss[0] === E && ss[1] === a && b === 8 * ss[2]!) [n, k, kMajor] = [a, 2 * b, false];
      else if (ss.length === 3 && ss[0] === E && ss[2] === b && a === 8 * ss[1]!) [n, k, kMajor] = [b, 2 * a, true];
      else {
        throw new InputError(
          `${where(ckpt, c.scale)}: shape ${fmt(ss)} fits neither [E, N, K/16] = [${E}, ${a}, ${(2 * b) / 16}] (weight ${fmt(ws)} as [E, N, K/2]) ` +
            `nor [E, K/16, N] = [${E}, ${(2 * a) / 16}, ${b}] (weight as [E, K/2, N], stored K-major)`,
        );
      }
      const dot = p.lastIndexOf('.');
      const group = p.slice(0, dot);
      const leaf = p.slice(dot + 1);
      const roles: [ExpertRole, number][] = FUSED_GATE_UP.has(leaf) ? [['gate', 0], ['up', n / 2]] : ROLE[leaf] ? [[ROLE[leaf]!, 0]] : [];
      if (dot < 0 || roles.length === 0) {
        throw new InputError(`${where(ckpt, weight)}: 3-D packed FP4 (U8) tensor whose name is not an expert projection (gate_up_proj, gate_proj, up_proj, down_proj, w1, w2, w3, w13); it cannot be placed`);
      }
      if (roles.length === 2 && n % 2 !== 0) throw new InputError(`${where(ckpt, weight)}: fused gate_up has an odd number of rows (${n})`);
      const partN = n / roles.length;
      for (let e = 0; e < E; e++) {
        for (const [role, row0] of roles) {
          const lin = source(`${p}[${e}]${roles.length > 1 ? `.${role}` : ''}`, partN, k);
          lin.view = { experts: E, expert: e, kMajor, row0, rowsTotal: n };
          place(group, e, role, lin, weight);
        }
      }
    });
  }

  const groups: ExpertGroup[] = [];
  for (const [prefix, experts] of [...slots].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    attempt(() => {
      const count = Math.max(...experts.keys()) + 1;
      const gated = [...experts.values()].some((s) => s.gate);
      const roles: ExpertRole[] = gated ? ['gate', 'up', 'down'] : ['up', 'down'];
      const list: ExpertParts[] = [];
      for (let e = 0; e < count; e++) {
        const slot = experts.get(e);
        for (const role of roles) {
          if (!slot?.[role]) {
            throw new InputError(`${ckpt.dir}: ${prefix}: expert ${e} has no quantized ${role} projection (experts must be numbered 0..${count - 1}, each with ${roles.join(', ')})`);
          }
        }
        list.push(slot!);
      }
      if (!gated) {
        // Non-gated only when there is no gate at all: an unquantized gate beside quantized
        // up/down is a broken export, not a relu² MoE.
        const gate = [...t.keys()].find((n) => n.startsWith(`${prefix}.`) && /(^|\.)(gate_proj|w1)(\.|_|$)/.test(n.slice(prefix.length + 1)));
        if (gate) throw new InputError(`${where(ckpt, gate)}: ${prefix}'s up and down projections are packed NVFP4 but this gate projection is not`);
      }
      groups.push({ prefix, gated, experts: list });
    });
  }
  return { dense, groups, ignored: [] };
}
