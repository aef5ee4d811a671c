// inspect's part for MXFP4 checkpoints (gpt-oss, compressed-tensors; FORMAT.md section 5):
// the MXFP4 linears and expert layers the plan finds, their shapes, what convert would convert
// and pass through, the output size under the one MXFP4 layout (v2, bfloat16), and every
// problem convert would stop at. Headers only: MXFP4 scales need no scan (a byte permutation
// loses nothing).
import { InputError } from '../errors.js';
import type { Checkpoint } from '../checkpoint/model-dir.js';
import type { Mxfp4Flavour } from '../checkpoint/flavour.js';
import { activationDtype, tensorBytes } from '../plan/plan.js';
import { findMxfp4, mxfp4DenseShape, planMxfp4 } from '../plan/mxfp4.js';
import type { Problem } from './problem.js';
import type { ActDtype } from '../transform/marlin.js';

export interface Mxfp4Inspection {
  dense: { n: number; k: number }[];
  moe: { experts: number; hidden: number; intermediate: number }[];
  /** Tensors (and bytes) converted and passed through. */
  converted: { tensors: number; bytes: number };
  passed: { tensors: number; bytes: number };
  dtype: ActDtype;
  dtypeFrom: 'option' | 'config.json' | 'assumed';
  /** Output of layout v2 (the only MXFP4 layout), or why there is none. */
  v2: { tensors?: number; tensor_bytes?: number; unavailable?: string };
  problems: Problem[];
}

export function inspectMxfp4(ckpt: Checkpoint, flavour: Mxfp4Flavour, dtypeOption?: ActDtype): Mxfp4Inspection {
  const problems: Problem[] = [];
  if (flavour.kind === 'modelopt') problems.push({ kind: 'malformed', message: `${ckpt.dir}: ModelOpt MXFP4's tensor layout is not known to marlin-fp4` });
  if (flavour.groupSize !== 32) problems.push({ kind: 'group-size', message: `${ckpt.dir}: MXFP4 group size ${flavour.groupSize} is not 32` });
  const messages: string[] = [];
  const found = findMxfp4(ckpt, flavour, messages);
  for (const message of new Set(messages)) problems.push({ kind: /: missing \(/.test(message) ? 'missing' : 'malformed', message });
  const dense = found.dense.map((lin) => {
    const [n, halfK] = ckpt.tensors.get(lin.weight)!.entry.shape as [number, number];
    try {
      mxfp4DenseShape(ckpt, lin);
    } catch (e) {
      if (!(e instanceof InputError)) throw e;
      problems.push({ kind: 'shape', message: e.message });
    }
    return { n, k: 2 * halfK };
  });
  const moe = [
    ...found.gptOss.map((g) => ({ experts: g.experts, hidden: g.hidden, intermediate: g.intermediate })),
    ...found.groups.map((g) => {
      const [i, halfH] = ckpt.tensors.get(g.experts[0]!.gate.weight)!.entry.shape as [number, number];
      return { experts: g.experts.length, hidden: 2 * halfH, intermediate: i };
    }),
  ];

  let dtype: ActDtype = 'bfloat16';
  let dtypeFrom: Mxfp4Inspection['dtypeFrom'] = 'assumed';
  try {
    dtype = activationDtype(ckpt, dtypeOption);
    dtypeFrom = dtypeOption ? 'option' : 'config.json';
  } catch (e) {
    if (!(e instanceof InputError)) throw e;
  }
  if (dtype !== 'bfloat16') {
    problems.push({ kind: 'dtype', message: `activation dtype ${dtype}: no Marlin kernel exists for MXFP4 weights with ${dtype} activations (bfloat16 only); convert needs --dtype bfloat16` });
  }

  const v2: Mxfp4Inspection['v2'] = {};
  let converted = { tensors: 0, bytes: 0 };
  let passed = { tensors: ckpt.tensors.size, bytes: [...ckpt.tensors.values()].reduce((a, r) => a + r.entry.end - r.entry.begin, 0) };
  try {
    const plan = planMxfp4(ckpt, flavour, { layout: 'v2', dtype: 'bfloat16' });
    const tensors = plan.shards.flatMap((s) => s.tensors);
    v2.tensors = tensors.length;
    v2.tensor_bytes = tensors.reduce((a, t) => a + tensorBytes(t), 0);
    const copies = new Set(tensors.flatMap((t) => (t.producer.kind === 'copy' ? [t.producer.tensor] : [])));
    const bytesOf = (names: string[]) => names.reduce((a, n) => a + ckpt.tensors.get(n)!.entry.end - ckpt.tensors.get(n)!.entry.begin, 0);
    const all = [...ckpt.tensors.keys()];
    const conv = all.filter((n) => !copies.has(n));
    converted = { tensors: conv.length, bytes: bytesOf(conv) };
    passed = { tensors: copies.size, bytes: bytesOf([...copies]) };
  } catch (e) {
    if (!(e instanceof InputError)) throw e;
    v2.unavailable = e.message;
    if (problems.length === 0) problems.push({ kind: 'malformed', message: e.message });
  }
  return { dense, moe, converted, passed, dtype, dtypeFrom, v2, problems };
}
