// The converted modules verify checks, derived from the plan convert makes of the source:
// each with its expected tensors (the plan's own output tensors), its source linears and the
// scale factor and global scales convert computed.
import { moduleTensorNames, type QuantizedTensors } from '../format/tensors.js';
import { moduleName, type DenseLinear, type MoeStack, type OutputTensor, type Plan } from '../plan/plan.js';
import { expertPart, type LinearSource } from '../plan/linears.js';
import type { ScaleOutcome } from '../plan/scale-plan.js';
import type { LinearShape } from '../transform/marlin.js';
import type { Reencoding } from '../transform/reencode.js';
import type { LayerReport } from './report.js';

/** One converted module as verify sees it: its source linears and its expected tensors. */
export interface Unit {
  name: string;
  kind: LayerReport['kind'];
  /** The plan's tensors for it (names, dtypes, shapes). */
  tensors: QuantizedTensors<OutputTensor>;
  /** experts[e] = the source linears of its parts, in output column order (one expert for a dense linear). */
  experts: LinearSource[][];
  parts: string[];
  /** Shape of one part. */
  shape: LinearShape;
  scales: ScaleOutcome;
  /** Global scale per expert as stored (a fused group's shared one: the largest of its parts'). */
  ws2: number[];
  /** [expert][part]: how that part's block scales move onto ws2, where its own global differs. */
  reencodings: (Reencoding | undefined)[][];
  /** The fused group a dense linear belongs to. */
  group?: string;
  /** The dense linear (absent for a stack). */
  dense?: DenseLinear;
  stack?: MoeStack;
}

/** Every output tensor of the plan, by name. */
export function outputTensors(plan: Plan): Map<string, OutputTensor> {
  return new Map(plan.shards.flatMap((s) => s.tensors.map((t) => [t.name, t] as const)));
}

/** Every converted module of the plan, in natural order (layers.2 before layers.10). */
export function unitsOf(plan: Plan, byName: Map<string, OutputTensor>): Unit[] {
  const tensors = (name: string, kind: Unit['kind']): QuantizedTensors<OutputTensor> => {
    const n = moduleTensorNames(name, kind);
    // MXFP4 modules have no global scale: the plan has no tensor of that name.
    return { weight: byName.get(n.weight)!, scales: byName.get(n.scales)!, global: byName.get(n.global) };
  };
  const out: Unit[] = [];
  for (const d of plan.dense) {
    const name = moduleName(d);
    out.push({
      name,
      kind: 'linear',
      tensors: tensors(name, 'linear'),
      experts: [[d.source]],
      parts: [name.slice(name.lastIndexOf('.') + 1)],
      shape: d.shape,
      scales: d.scales,
      ws2: [d.ws2],
      reencodings: [[d.reencoding]],
      group: d.group?.name,
      dense: d,
    });
  }
  for (const s of plan.stacks) {
    const name = moduleName(s);
    out.push({
      name,
      kind: s.kind,
      tensors: tensors(name, s.kind),
      experts: s.sources,
      parts: s.parts,
      shape: s.part,
      scales: s.scales,
      ws2: s.ws2,
      reencodings: s.reencodings,
      stack: s,
    });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }));
}
