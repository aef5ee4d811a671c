// inspect --scan-scales on an NVFP4 checkpoint: reads every block-scale tensor (1/8 of the
// weights, never the weights) and reports what convert's up-front scale pass would find.
import type { Checkpoint } from '../checkpoint/model-dir.js';
import { expertPart, where, type FoundLinears, type LinearSource } from '../plan/linears.js';
import { readSource } from '../plan/source-bytes.js';
import { lostScales, mergeScaleStats, scaleFactor, scanScales, subnormalScales, type ScaleStats } from '../transform/scale-stats.js';
import { TransformError, type ActDtype } from '../transform/marlin.js';
import { stackName, stacksOf } from '../format/moe.js';
import type { ModuleKind } from '../format/tensors.js';
import type { Problem } from './problem.js';

export interface ScaleLayer {
  name: string;
  kind: ModuleKind;
  /** v2's scale factor for the activation dtype. */
  sf_v2: number;
  /** Non-zero block scales v2 would set to 0 (data lost). */
  zeroed_v2: number;
  /** Block scales below 2^-6: decoded wrongly by v1's bfloat16 kernel. */
  subnormal: number;
}

export interface ScaleScan {
  activation_dtype: ActDtype;
  tensors_scanned: number;
  /** Block-scale tensors holding a negative or NaN scale (each is a problem). */
  invalid_tensors: number;
  zeroed_v2: number;
  subnormal: number;
  layers: ScaleLayer[];
}

export async function scanBlockScales(ckpt: Checkpoint, found: FoundLinears, dtype: ActDtype): Promise<{ scan: ScaleScan; problems: Problem[] }> {
  const problems: Problem[] = [];
  // The modules convert would write, each with the linears that share its scale factor.
  const units: { name: string; kind: ModuleKind; linears: LinearSource[] }[] = [
    ...found.dense.map((l) => ({ name: l.prefix, kind: 'linear' as const, linears: [l] })),
    ...found.groups.flatMap((g) =>
      stacksOf(g.gated).map(({ which, kind, parts }) => ({ name: stackName(g.prefix, which), kind, linears: g.experts.flatMap((ex) => parts.map((role) => expertPart(ex, role))) })),
    ),
  ];
  const scan: ScaleScan = { activation_dtype: dtype, tensors_scanned: 0, invalid_tensors: 0, zeroed_v2: 0, subnormal: 0, layers: [] };
  for (const u of units) {
    const stats: ScaleStats[] = [];
    for (const lin of u.linears) {
      const data = await readSource(ckpt, lin, 'scale');
      scan.tensors_scanned++;
      try {
        stats.push(scanScales(lin.scale, data, lin.k / 16));
      } catch (e) {
        if (!(e instanceof TransformError)) throw e;
        scan.invalid_tensors++;
        problems.push({ kind: 'block-scale', message: `${where(ckpt, e.tensor)}: ${e.reason}` });
      }
    }
    if (stats.length === 0) continue;
    const all = mergeScaleStats(stats);
    const sf = scaleFactor(all, 'v2', dtype);
    const layer: ScaleLayer = { name: u.name, kind: u.kind, sf_v2: sf, zeroed_v2: lostScales(all, 'v2', sf), subnormal: subnormalScales(all) };
    scan.zeroed_v2 += layer.zeroed_v2;
    scan.subnormal += layer.subnormal;
    scan.layers.push(layer);
  }
  if (dtype === 'bfloat16' && scan.subnormal > 0) {
    const n = scan.layers.filter((l) => l.subnormal > 0).length;
    problems.push({
      kind: 'v1-bfloat16-subnormal',
      layout: 'v1',
      message: `${scan.subnormal} block scales in ${n} layer${n === 1 ? '' : 's'} are below 2^-6: the v1 bfloat16 kernel decodes them wrongly (use layout v2)`,
    });
  }
  return { scan, problems };
}

