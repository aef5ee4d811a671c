// MoE expert stacks: which stacks an expert group becomes, which expert parts each one
// concatenates along N, and the padded shape of one part (FORMAT.md section 6). The padding
// arithmetic itself is the transform layer's (moePaddedIntermediate), stated once there.
import { moePaddedIntermediate, type LayoutVersion, type LinearShape } from '../transform/marlin.js';
import type { ModuleKind } from './tensors.js';

/** An expert's projections, whatever the source calls them (gate_proj / w1, up_proj / w3, down_proj / w2). */
export type ExpertRole = 'gate' | 'up' | 'down';

export type StackWhich = 'w13' | 'w2';

export interface StackSpec {
  which: StackWhich;
  kind: ModuleKind;
  /** Expert parts concatenated along N, in this order. */
  parts: ExpertRole[];
}

/** A gated expert group becomes two stacks: w13 (gate then up along N) and w2 (down). */
export const GATED_STACKS: readonly StackSpec[] = Object.freeze([
  { which: 'w13', kind: 'moe-w13', parts: ['gate', 'up'] },
  { which: 'w2', kind: 'moe-w2', parts: ['down'] },
]);

/**
 * A non-gated expert group (up and down only: Nemotron-H's relu² experts) becomes w13 from
 * `up` alone (one shard, N = Ip) and w2 (down): the stacks vLLM's Marlin MoE path takes
 * with is_act_and_mul=False (FORMAT.md section 6.2).
 */
export const NON_GATED_STACKS: readonly StackSpec[] = Object.freeze([
  { which: 'w13', kind: 'moe-w13', parts: ['up'] },
  { which: 'w2', kind: 'moe-w2', parts: ['down'] },
]);

/** The stacks of a gated or non-gated expert group. */
export function stacksOf(gated: boolean): readonly StackSpec[] {
  return gated ? GATED_STACKS : NON_GATED_STACKS;
}

/** The stack's module name: `<experts prefix>.w13`; its tensors are `<name>_weight`… */
export function stackName(groupPrefix: string, which: StackWhich): string {
  return `${groupPrefix}.${which}`;
}

/** The layer sizes of an expert group: hidden H, intermediate I, and I padded for the layout. */
export interface StackSizes {
  hidden: number;
  intermediate: number;
  /** Padded intermediate size (v2), shared by w13's N and w2's K. */
  ip: number;
}

export function stackSizes(hidden: number, intermediate: number, layout: LayoutVersion): StackSizes {
  return { hidden, intermediate, ip: moePaddedIntermediate(intermediate, hidden, layout) };
}

/** Shape of one part of one expert: w13 parts are [I, H] (N padded to Ip), w2 is [H, I] (K padded to Ip). */
export function stackPartShape(which: StackWhich, { hidden, intermediate, ip }: StackSizes): LinearShape {
  return which === 'w13' ? { n: intermediate, k: hidden, np: ip, kp: hidden } : { n: hidden, k: intermediate, np: hidden, kp: ip };
}
