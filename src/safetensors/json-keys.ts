/** Where a duplicated object key was found: `within` lists the keys of the enclosing objects. */
export interface DuplicateKey {
  key: string;
  within: string[];
}

/**
 * Finds the first object key that occurs twice in the same JSON object, at any depth.
 *
 * JSON.parse silently keeps the last of two equal keys, so a header could show one tensor
 * to us and another to a different parser. Counting keys of the parsed object can't see
 * that, so we re-walk the text. Precondition: `text` already parsed with JSON.parse; that
 * lets this scanner only track strings and brackets instead of being a full validator.
 * Keys are compared after unescaping, so "a" and "\u0061" count as the same key.
 */
export function findDuplicateKey(text: string): DuplicateKey | undefined {
  // One frame per open container: the keys seen so far for an object, null for an array.
  const frames: (Set<string> | null)[] = [];
  // lastKey[i] is the most recent key read in frames[i]; it names the path of nested values.
  const lastKey: string[] = [];
  let expectKey = false;

  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const close = stringEnd(text, i);
      const depth = frames.length - 1;
      const frame = frames[depth];
      if (expectKey && frame) {
        const key = decodeString(text, i, close);
        if (frame.has(key)) return { key, within: lastKey.slice(0, depth) };
        frame.add(key);
        lastKey[depth] = key;
        expectKey = false;
      }
      i = close;
    } else if (c === 0x7b /* { */) {
      frames.push(new Set());
      expectKey = true;
    } else if (c === 0x5b /* [ */) {
      frames.push(null);
      lastKey[frames.length - 1] = '[]';
      expectKey = false;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      frames.pop();
      lastKey.length = frames.length;
      expectKey = false;
    } else if (c === 0x2c /* , */) {
      expectKey = frames[frames.length - 1] != null;
    }
  }
  return undefined;
}

/** Index of the quote closing the string literal that opens at `open`. */
function stringEnd(text: string, open: number): number {
  for (let j = open + 1; j < text.length; j++) {
    const c = text.charCodeAt(j);
    if (c === 0x5c /* \ */) j++;
    else if (c === 0x22) return j;
  }
  // Unreachable for text JSON.parse accepted; fail loudly rather than mis-scan.
  throw new Error('findDuplicateKey: unterminated string (input was not valid JSON)');
}

function decodeString(text: string, open: number, close: number): string {
  const raw = text.slice(open + 1, close);
  // The common case has no escapes; only pay for JSON.parse when one is present.
  return raw.includes('\\') ? (JSON.parse(text.slice(open, close + 1)) as string) : raw;
}
