// The record of each converted module, derived from the plan: convert writes it into every
// shard's __metadata__ and the manifest (format/records.ts says where and how), and verify
// compares what the output claims with the record the same plan gives.
import type { FusedGroupRecord, LayerRecord, ReencodeRecord } from '../format/records.js';
import { moduleTensorNames } from '../format/tensors.js';
import type { ReencodeEffect } from '../transform/reencode.js';
import type { FusedGroup } from './fused-groups.js';
import { moduleName, type DenseLinear, type MoeStack, type Plan } from './plan.js';
import { SCHEME_GROUP_SIZE } from '../format/quant-config.js';

function reencodeRecord(e: ReencodeEffect, extra: Pick<ReencodeRecord, 'source_global' | 'shared_global' | 'experts'>): ReencodeRecord {
  return { scales: e.rescaled, changed: e.changed, underflowed: e.underflowed, max_relative_change: e.maxRelativeChange, ...extra };
}

/** MXFP4 records say so (and their group size); NVFP4 records stay as they were. */
function schemeFields(plan: Plan): Partial<LayerRecord> {
  return plan.scheme === 'mxfp4' ? { scheme: 'mxfp4', group_size: SCHEME_GROUP_SIZE.mxfp4 } : {};
}

export function denseRecord(plan: Plan, d: DenseLinear): LayerRecord {
  return {
    name: moduleName(d),
    kind: 'linear',
    layout: plan.layout,
    activation_dtype: plan.dtype,
    ...d.shape,
    sf: d.scales.sf,
    zeroed_scales: d.scales.lost,
    subnormal_scales: d.scales.subnormal,
    ...(d.group ? { fused_group: d.group.name } : {}),
    ...(d.reencoding && d.scales.reencoded
      ? { reencoded: reencodeRecord(d.scales.reencoded, { source_global: d.sourceWs2, shared_global: d.ws2 }) }
      : {}),
    ...schemeFields(plan),
  };
}

export function stackRecord(plan: Plan, s: MoeStack): LayerRecord {
  return {
    name: moduleName(s),
    kind: s.kind,
    layout: plan.layout,
    activation_dtype: plan.dtype,
    ...s.part,
    sf: s.scales.sf,
    experts: s.sources.length,
    hidden: s.sizes.hidden,
    intermediate: s.sizes.intermediate,
    ...(s.gated === undefined ? {} : { gated: s.gated }),
    zeroed_scales: s.scales.lost,
    subnormal_scales: s.scales.subnormal,
    ...schemeFields(plan),
    ...(plan.scheme === 'mxfp4' ? { bias: s.bias !== undefined, interleaved: s.interleaved === true } : {}),
    ...(s.scales.reencoded
      ? { reencoded: reencodeRecord(s.scales.reencoded, { experts: s.reencodings.filter((parts) => parts.some((r) => r)).length }) }
      : {}),
  };
}

export function fusedGroupRecord(g: FusedGroup<DenseLinear>): FusedGroupRecord {
  return {
    name: g.name,
    members: g.members.map((m) => m.source.prefix),
    shared_global: g.shared,
    sf: g.members[0]!.scales.sf,
    concatenable: g.concatenable,
  };
}

/** Every converted module of the plan, keyed by the output tensor that anchors it (its weight). */
export function layerRecords(plan: Plan): Map<string, LayerRecord> {
  const out = new Map<string, LayerRecord>();
  for (const d of plan.dense) out.set(moduleTensorNames(moduleName(d), 'linear').weight, denseRecord(plan, d));
  for (const s of plan.stacks) out.set(moduleTensorNames(moduleName(s), s.kind).weight, stackRecord(plan, s));
  return out;
}
