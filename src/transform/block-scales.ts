// Rules of NVFP4 block scales (E4M3 bytes) that the TypeScript side applies: the value of a
// byte, v2's clamp (which non-zero scales a conversion turns into 0, FORMAT.md §3), and the one
// message for a scale Marlin cannot store, whichever native call found it (CPU or GPU, stack or
// scan). The native code applies the same clamp to the bytes it writes (layout.h's
// scale_is_lost); here it serves the planner's counts and verify's expectations. It imports
// nothing, so that marlin.ts (whose LayoutVersion is 'v1' | 'v2') can use it.

/** Value of an E4M3 byte (FORMAT.md §1): sign, 4 exponent bits (bias 7), 3 mantissa bits; 0x7F/0xFF are NaN. */
export function e4m3Value(b: number): number {
  if ((b & 0x7f) === 0x7f) return NaN;
  const e = (b >> 3) & 0xf;
  const m = b & 7;
  const v = e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7);
  return b & 0x80 ? -v : v;
}

/** Whether v2's clamp turns this non-negative, non-zero E4M3 block scale into 0 (scaled value below 2^-6). */
export function scaleIsLost(b: number, layout: 'v1' | 'v2', sf: number): boolean {
  return layout === 'v2' && b > 0 && b < 0x7f && e4m3Value(b) * sf * 128 < 2;
}

/** The native addon's error code for a negative or NaN block scale (native/src/promise_worker.h). */
export const BAD_BLOCK_SCALE = 'MFP4_BAD_BLOCK_SCALE';

/** Where a negative or NaN block scale is: the fields of the native error, or of a scan's first bad byte. */
export interface BadBlockScale {
  /** Expert of the stack, and how many experts the stack has (1 for a dense tensor). */
  expert: number;
  experts: number;
  /** Part (gate, up) of that expert, and its first row in the fused tensor. */
  part: number;
  rowOffset: number;
  /** Row and group within the part. */
  row: number;
  group: number;
  /** The E4M3 byte. */
  byte: number;
}

/** The fields of a native BadBlockScale error, or undefined for any other error. */
export function badBlockScaleOf(e: unknown): BadBlockScale | undefined {
  if (typeof e !== 'object' || e === null || (e as { code?: unknown }).code !== BAD_BLOCK_SCALE) return undefined;
  const o = e as Record<string, unknown>;
  const num = (key: keyof BadBlockScale) => (typeof o[key] === 'number' ? (o[key] as number) : 0);
  return {
    expert: num('expert'),
    experts: num('experts'),
    part: num('part'),
    rowOffset: num('rowOffset'),
    row: num('row'),
    group: num('group'),
    byte: num('byte'),
  };
}

/**
 * The one message for a negative or NaN block scale: its row in the (fused) tensor, its group,
 * and the expert when the stack has several.
 */
export function badScaleReason(s: BadBlockScale): string {
  const what = Number.isNaN(e4m3Value(s.byte)) ? 'NaN' : `negative (${e4m3Value(s.byte)})`;
  const where = s.experts > 1 ? `expert ${s.expert}: ` : '';
  return `${where}block scale [${s.rowOffset + s.row}, ${s.group}] is ${what}; Marlin stores scales without a sign`;
}

/** A native call's error as the reason a tensor failed: the block-scale message, or the error's own. */
export function nativeErrorReason(e: unknown): string {
  const bad = badBlockScaleOf(e);
  return bad ? badScaleReason(bad) : (e as Error).message;
}
