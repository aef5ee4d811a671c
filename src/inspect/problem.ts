// What inspect reports when a checkpoint would not convert (or convert with losses): one
// kind and one line each. Its own file so that inspect's parts share it without importing
// inspect.ts, which imports them.
import type { LayoutVersion } from '../transform/marlin.js';

export type ProblemKind =
  | 'shape'
  | 'missing'
  | 'malformed'
  | 'global-scale'
  | 'fused-global-scale'
  | 'block-scale'
  | 'dtype'
  | 'group-size'
  | 'v1-bfloat16-subnormal'
  | 'metadata';

export interface Problem {
  kind: ProblemKind;
  /** Set when the problem concerns one layout only. */
  layout?: LayoutVersion;
  message: string;
}
