// verify's check of block scales re-encoded onto a fused group's shared global (FORMAT.md
// section 8.1): each stored scale against the source's own, within the bound the E4M3
// rounding implies, |s' − s·own/shared| <= max(x·2^-4, 2^-10) with x = s·own/shared, and a 0
// also where v2's clamp (stored values below 2^-6 / sf, block-scales.ts) may have taken a value
// the bound allows.
// Independent of the re-encoding table convert used: only the bound is shared.
import { e4m3Value, scaleIsLost } from '../transform/block-scales.js';
import { reencodeBound } from '../transform/reencode.js';
import type { LayoutVersion } from '../transform/marlin.js';

export interface ReencodedCheck {
  /** Block scales outside the bound (or undecodable). */
  outside: number;
  /** Index of the first one, -1 when none. */
  first: number;
  /** Largest |s'·shared − s·own| / (s·own) over the non-zero source scales. */
  maxRelativeChange: number;
}

// Slack for the double arithmetic of x: the bound is met with equality at E4M3 midpoints.
const SLACK = 1 + 1e-12;

/** decoded: the stored scales decoded back to E4M3 (sf undone); source: the source's block scales. */
export function checkReencodedScales(
  decoded: Uint8Array,
  source: Uint8Array,
  own: number,
  shared: number,
  layout: LayoutVersion,
  sf: number,
): ReencodedCheck {
  // The largest value v2's clamp sets to 0 (its lost bytes are the smallest ones): a stored 0
  // is consistent where the bound allows a value that small.
  let lostUpTo = -Infinity;
  for (let b = 1; b < 0x7f && scaleIsLost(b, layout, sf); b++) lostUpTo = e4m3Value(b);
  let outside = 0;
  let first = -1;
  let maxRelativeChange = 0;
  for (let i = 0; i < source.length; i++) {
    const s = e4m3Value(source[i]!);
    const d = e4m3Value(decoded[i]!);
    const x = (s * own) / shared;
    const bound = reencodeBound(x) * SLACK;
    const ok = Math.abs(d - x) <= bound || (d === 0 && x - bound <= lostUpTo);
    if (!ok) {
      if (first < 0) first = i;
      outside++;
      continue;
    }
    if (s > 0) maxRelativeChange = Math.max(maxRelativeChange, Math.abs(d * shared - s * own) / (s * own));
  }
  return { outside, first, maxRelativeChange };
}
