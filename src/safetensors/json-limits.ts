// Limits checked on JSON text before JSON.parse builds anything from it: nesting depth (a
// config nested 10,000 deep parses, then overflows the stack of whatever walks it), the
// number of entries of the top-level object (a safetensors header of a million tensors cost
// 30 s and 1.7 GB before it was refused), and, where only integers belong (safetensors
// shapes and data_offsets), number literals written as anything but a plain non-negative
// integer ("4.0", "4e0" and "-0" all parse to integers and would slip through a check of the
// parsed value). One linear pass; nothing is allocated per token.

export interface JsonLimits {
  /** Deepest nesting of objects and arrays allowed (the top-level value is depth 1). */
  maxDepth: number;
  /** Most entries allowed in the top-level object. */
  maxTopEntries?: number;
  /** Every number must be written as a plain non-negative integer. */
  integersOnly?: boolean;
}

export type JsonLimitProblem =
  | { kind: 'depth'; limit: number }
  | { kind: 'entries'; limit: number }
  /** `path`: the keys (objects) and indices (arrays) leading to the literal, outermost first. */
  | { kind: 'number'; literal: string; path: (string | number)[] };

const INTEGER = /^(0|[1-9][0-9]*)$/;
const NO_KEY: [number, number] = [0, 0];

/** What the scan counted on the way, for a caller that wants it. */
export interface JsonCounts {
  /**
   * Object keys in the text (the colons outside strings): JSON.parse keeps one of two equal
   * keys, so a parsed value with fewer keys than this had a key written twice in one object.
   */
  keys: number;
}

/**
 * The first limit `text` breaks, or undefined. Text that is not valid JSON is left for
 * JSON.parse to reject: the scan never throws. `counts`, when given, is filled in (as far as
 * the scan went).
 */
export function checkJsonLimits(text: string, limits: JsonLimits, counts: JsonCounts = { keys: 0 }): JsonLimitProblem | undefined {
  counts.keys = 0;
  let depth = 0;
  let topCommas = 0;
  // Span of the last string literal; per open container, the span of its current key (objects)
  // or its element index (arrays). Keys are decoded only for a message.
  let lastString: [number, number] = [0, 0];
  // keys[0 .. depth) are live; the array never shrinks (setting an array's length on every
  // bracket cost a tenth of the scan of an MoE shard's header).
  const keys: ([number, number] | number)[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      for (; j < text.length; j++) {
        const d = text.charCodeAt(j);
        if (d === 0x5c /* \ */) j++;
        else if (d === 0x22) break;
      }
      if (j >= text.length) return undefined; // unterminated: JSON.parse says so
      lastString = [i, j + 1];
      i = j;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      depth++;
      if (depth > limits.maxDepth) return { kind: 'depth', limit: limits.maxDepth };
      keys[depth - 1] = c === 0x5b ? 0 : NO_KEY;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--; // below 0 only in text that is not JSON (then no key is read from `keys`)
    } else if (c === 0x3a /* : */) {
      counts.keys++;
      if (depth > 0) keys[depth - 1] = lastString;
    } else if (c === 0x2c /* , */) {
      const k = keys[depth - 1];
      if (typeof k === 'number') keys[depth - 1] = k + 1;
      // n commas at the top level separate n + 1 entries.
      if (depth === 1 && limits.maxTopEntries !== undefined && ++topCommas >= limits.maxTopEntries) {
        return { kind: 'entries', limit: limits.maxTopEntries };
      }
    } else if (limits.integersOnly && (c === 0x2d /* - */ || (c >= 0x30 && c <= 0x39))) {
      let j = i + 1;
      let digits = c !== 0x2d;
      for (; j < text.length; j++) {
        const d = text.charCodeAt(j);
        if (d >= 0x30 && d <= 0x39) continue;
        if (!(d === 0x2e || d === 0x65 || d === 0x45 || d === 0x2b || d === 0x2d)) break;
        digits = false;
      }
      // Plain digits without a leading zero need no slice (an MoE header has 100,000 of them).
      if (!digits || (c === 0x30 && j > i + 1)) {
        const literal = text.slice(i, j);
        if (!INTEGER.test(literal)) return { kind: 'number', literal, path: keys.slice(0, Math.max(depth, 0)).map((k) => (typeof k === 'number' ? k : decodeKey(text, k))) };
      }
      i = j - 1;
    }
  }
  return undefined;
}

function decodeKey(text: string, [a, b]: [number, number]): string {
  if (b <= a) return '?';
  try {
    return JSON.parse(text.slice(a, b)) as string;
  } catch {
    return text.slice(a + 1, b - 1);
  }
}
