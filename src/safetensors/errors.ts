/**
 * The one error type for malformed or misused safetensors data. Callers branch on
 * `instanceof SafetensorsError` to tell "this file is bad" from I/O failures (ENOENT, EACCES),
 * which we deliberately let through as Node's own errors.
 */
export class SafetensorsError extends Error {
  constructor(
    readonly file: string,
    readonly tensor: string | undefined,
    readonly reason: string,
  ) {
    super(oneLine(tensor === undefined ? `${file}: ${reason}` : `${file}: tensor ${tensor}: ${reason}`));
    this.name = 'SafetensorsError';
  }
}

// Tensor names and metadata come from untrusted files; a name containing a newline would
// otherwise let a file forge extra lines in logs. Only the message is escaped: the
// structured fields keep the raw values so callers can still match on them.
function oneLine(s: string): string {
  return s.replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, (c) =>
    c === '\n' ? '\\n' : c === '\r' ? '\\r' : c === '\t' ? '\\t' : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}
