// Which of verify's checks run (`--checks integrity,structure,gemm`, default all): CI can run
// a quick structural pass, and each check can be tested on its own.
import { InputError } from '../errors.js';

export const CHECKS = ['integrity', 'structure', 'gemm'] as const;
export type CheckName = (typeof CHECKS)[number];

/** The set a comma-separated list names; an unknown or empty name is a usage error. */
export function parseChecks(spec: string | readonly string[] | undefined): Set<CheckName> {
  if (spec === undefined) return new Set(CHECKS);
  const names = (typeof spec === 'string' ? spec.split(',') : [...spec]).map((s) => s.trim());
  const out = new Set<CheckName>();
  for (const n of names) {
    if (!(CHECKS as readonly string[]).includes(n)) throw new InputError(`--checks ${names.join(',')}: ${JSON.stringify(n)} is not one of ${CHECKS.join(', ')}`);
    out.add(n as CheckName);
  }
  if (out.size === 0) throw new InputError('--checks: name at least one of integrity, structure, gemm');
  return out;
}
