// Fused groups: the dense linears that vLLM concatenates along N into one parameter before it
// prepares it for Marlin (q/k/v of one attention, gate/up of one MLP). Such a group shares one
// scale factor and one global scale, computed over the whole group as vLLM computes them over
// the fused parameter (FORMAT.md section 8); MoE gate/up already share their w13 stack. Where
// the parts' global scales differ, the group takes the largest and the other parts' block
// scales are re-encoded onto it (transform/reencode.ts).
import { InputError } from '../errors.js';
import type { Checkpoint } from '../checkpoint/model-dir.js';
import { linearShape, type LayoutVersion, type LinearShape } from '../transform/marlin.js';
import { reencoding, type Reencoding } from '../transform/reencode.js';
import { where, type LinearSource } from './linears.js';

/** Module names fused by vLLM, in its concatenation order, and the fused module's name. */
export const FUSED_NAMES: readonly { fused: string; parts: readonly string[] }[] = Object.freeze([
  { fused: 'qkv_proj', parts: ['q_proj', 'k_proj', 'v_proj'] },
  { fused: 'gate_up_proj', parts: ['gate_proj', 'up_proj'] },
  { fused: 'w13', parts: ['w1', 'w3'] },
]);

/** What the grouping needs of a planned dense linear. */
export interface GroupableLinear {
  source: LinearSource;
  shape: LinearShape;
  /** The linear's own global scale (ModelOpt's weight_scale_2). */
  sourceWs2: number;
}

export interface FusedGroup<T extends GroupableLinear = GroupableLinear> {
  /** The fused module vLLM would hold: `<parent>.qkv_proj`, `<parent>.gate_up_proj`, `<parent>.w13`. */
  name: string;
  /** The parts in concatenation order (q, k, v / gate, up). */
  members: T[];
  /** The global scale every part is stored with: the largest of the parts' (sharedGlobal). */
  shared: number;
  /**
   * Concatenating the parts' tensors along N gives exactly the Marlin tensors of the fused
   * layer (vLLM's bytes): no part is padded along N and every part has the fused layer's Kp.
   */
  concatenable: boolean;
}

/**
 * The global scale a fused group (or one expert's gate/up) is stored with: the largest of
 * its parts'. vLLM's dense path keeps the largest too (modelopt.py, process_weights_after_loading:
 * weight_scale_2.max()), and with the largest every re-encoded block scale s · own / shared
 * is at most s, so none can overflow E4M3's 448.
 */
export function sharedGlobal(globals: readonly number[]): number {
  return Math.max(...globals);
}

/** The re-encoding a part needs onto the shared global, or undefined where its global is the shared one. */
export function partReencoding(own: number, shared: number): Reencoding | undefined {
  return own === shared ? undefined : reencoding(own, shared);
}

const parentOf = (prefix: string) => prefix.slice(0, prefix.lastIndexOf('.'));
const leafOf = (prefix: string) => prefix.slice(prefix.lastIndexOf('.') + 1);

/**
 * The fused groups among the converted dense linears: every part present (converted, not
 * ignored) under one parent, all with the same K. Anything else stays on its own.
 */
export function findFusedGroups<T extends GroupableLinear>(dense: T[], layout: LayoutVersion): FusedGroup<T>[] {
  const byPrefix = new Map(dense.map((d) => [d.source.prefix, d]));
  const parents = [...new Set(dense.map((d) => parentOf(d.source.prefix)))].sort();
  const out: FusedGroup<T>[] = [];
  for (const parent of parents) {
    for (const { fused, parts } of FUSED_NAMES) {
      const members = parts.map((p) => byPrefix.get(`${parent}.${p}`));
      if (members.some((m) => !m)) continue;
      const ms = members as T[];
      if (ms.some((m) => m.shape.k !== ms[0]!.shape.k)) continue;
      out.push({ name: `${parent}.${fused}`, members: ms, shared: sharedGlobal(ms.map((m) => m.sourceWs2)), concatenable: concatenable(ms, layout) });
    }
  }
  return out;
}

function concatenable(members: GroupableLinear[], layout: LayoutVersion): boolean {
  if (layout === 'v1') return true; // v1 pads nothing; its shape rules hold for every part
  const n = members.reduce((a, m) => a + m.shape.n, 0);
  const k = members[0]!.shape.k;
  const whole = linearShape('fused', layout, [n, k / 2], [n, k / 16]);
  return whole.np === n && members.every((m) => m.shape.np === m.shape.n && m.shape.kp === whole.kp);
}

/** "q_proj 0.5, k_proj 0.25, …" for messages. */
export function globalsText(members: GroupableLinear[]): string {
  return members.map((m) => `${leafOf(m.source.prefix)} ${m.sourceWs2}`).join(', ');
}

/** Whether the group's parts have different global scales (and so need re-encoding). */
export function globalsDiffer(g: FusedGroup): boolean {
  return g.members.some((m) => m.sourceWs2 !== g.shared);
}

/** convert --strict: a group whose parts' global scales differ is refused instead of re-encoded. */
export function strictRefusal(ckpt: Checkpoint, g: FusedGroup): InputError {
  const odd = g.members.find((m) => m.sourceWs2 !== g.shared)!;
  return new InputError(
    `${where(ckpt, odd.source.global!)}: fused ${g.name} has parts with different global scales (${globalsText(g.members)}); ` +
      `--strict refuses to re-encode their block scales onto one global`,
  );
}

/** What inspect says of a group convert will re-encode (not a problem: convert accepts it). */
export function reencodeNotice(g: FusedGroup): string {
  return (
    `${g.name}: fused parts have different global scales (${globalsText(g.members)}): convert re-encodes the others' ` +
    `block scales onto the largest, ${g.shared} (--strict refuses)`
  );
}

/** The same for one MoE expert's gate and up. */
export function expertReencodeNotice(expert: string, gate: number, up: number): string {
  return `${expert}: gate and up projections have different global scales (${gate} vs ${up}): convert re-encodes the smaller one's block scales onto ${sharedGlobal([gate, up])} (--strict refuses)`;
}
