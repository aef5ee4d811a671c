// Which layers and experts get GEMMs: `--layers` (all, an evenly spread count, or a regex)
// and `--experts` pick deterministic samples, so two runs check the same things.
import { InputError } from '../errors.js';

/** count indices in [0, total) spread evenly, first and last included. */
export function sampleIndices(total: number, count: number): number[] {
  if (count >= total) return [...Array(total).keys()];
  if (count <= 1) return [0];
  const out = new Set<number>();
  for (let i = 0; i < count; i++) out.add(Math.round((i * (total - 1)) / (count - 1)));
  return [...out].sort((a, b) => a - b);
}

/** The layers `--layers` selects, by name. */
export function selectLayers(names: string[], spec: string): Set<string> {
  if (spec === 'all') return new Set(names);
  if (/^\d+$/.test(spec)) {
    const n = Number(spec);
    if (n < 1) throw new InputError(`--layers ${spec}: must be at least 1`);
    return new Set(sampleIndices(names.length, n).map((i) => names[i]!));
  }
  let re: RegExp;
  try {
    re = new RegExp(spec);
  } catch (e) {
    throw new InputError(`--layers ${spec}: not a valid regular expression (${(e as Error).message})`);
  }
  const picked = names.filter((n) => re.test(n));
  if (picked.length === 0) throw new InputError(`--layers ${spec}: matches none of the ${names.length} converted layers`);
  return new Set(picked);
}
