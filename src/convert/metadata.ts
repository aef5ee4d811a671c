// What the output records about each converted module: in every shard's __metadata__ and in
// the manifest. Plain data only (no timestamps), so outputs are byte-identical across runs.
import type { DenseLinear, MoeStack, Plan } from '../plan/plan.js';

export interface LayerRecord {
  name: string;
  kind: 'linear' | 'moe-w13' | 'moe-w2';
  layout: string;
  activation_dtype: string;
  n: number;
  k: number;
  np: number;
  kp: number;
  sf: number;
  experts?: number;
  hidden?: number;
  intermediate?: number;
  /** Block scales layout v2 set to 0. */
  zeroed_scales: number;
  /** Block scales below 2^-6: decoded wrongly by v1's bfloat16 kernel. */
  subnormal_scales: number;
}

export function denseRecord(plan: Plan, d: DenseLinear): LayerRecord {
  return {
    name: d.source.prefix,
    kind: 'linear',
    layout: plan.layout,
    activation_dtype: plan.dtype,
    ...d.shape,
    sf: d.scales.sf,
    zeroed_scales: d.scales.lost,
    subnormal_scales: d.scales.subnormal,
  };
}

export function stackRecord(plan: Plan, s: MoeStack): LayerRecord {
  const hidden = s.which === 'w13' ? s.part.k : s.part.n;
  const intermediate = s.which === 'w13' ? s.part.n : s.part.k;
  return {
    name: `${s.group.prefix}.${s.which}`,
    kind: s.which === 'w13' ? 'moe-w13' : 'moe-w2',
    layout: plan.layout,
    activation_dtype: plan.dtype,
    ...s.part,
    sf: s.scales.sf,
    experts: s.group.experts.length,
    hidden,
    intermediate,
    zeroed_scales: s.scales.lost,
    subnormal_scales: s.scales.subnormal,
  };
}

/** Every converted module of the plan, keyed by the output tensor that anchors it. */
export function layerRecords(plan: Plan): Map<string, LayerRecord> {
  const out = new Map<string, LayerRecord>();
  for (const d of plan.dense) out.set(`${d.source.prefix}.weight`, denseRecord(plan, d));
  for (const s of plan.stacks) out.set(`${s.group.prefix}.${s.which}_weight`, stackRecord(plan, s));
  return out;
}
