// Error kinds that decide the exit code. A user mistake is one line, never a stack trace.

/** Bad input or usage (exit code 2): the message names the file, tensor and reason. */
export class InputError extends Error {
  /** The Node error code when a file operation failed (ENOENT, …). */
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'InputError';
  }
}

/** The environment cannot do what was asked, e.g. no GPU for `--device cuda` (exit code 3). */
export class EnvironmentError extends Error {
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'EnvironmentError';
  }
}

/** A verification ran and found problems (exit code 1); its report has been printed. */
export class VerificationFailed extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'VerificationFailed';
  }
}

export const EXIT = { ok: 0, verifyFailed: 1, input: 2, environment: 3, internal: 4 } as const;

// Why a file operation failed, in words; the code follows in parentheses.
const IO_REASONS: Record<string, string> = {
  ENOENT: 'no such file or directory',
  ENOSPC: 'no space left on the device',
  EFBIG: 'file too large for this file system or process limit',
  EDQUOT: 'disk quota exceeded',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  EIO: 'input/output error',
  EISDIR: 'is a directory',
  ENOTDIR: 'a part of the path is not a directory',
  ELOOP: 'too many levels of symbolic links, or a link where none may be',
  ENAMETOOLONG: 'file name too long',
  EMFILE: 'too many open files',
  ENFILE: 'too many open files in the system',
  ENOMEM: 'out of memory',
  ENXIO: 'no such device',
  ENODEV: 'no such device',
  ENOTEMPTY: 'directory not empty',
  EEXIST: 'already exists',
};

// What the file is, not where the machine is: these are the user's to fix (exit code 2).
const INPUT_CODES = new Set(['ENOENT', 'EISDIR', 'ENOTDIR', 'ELOOP', 'ENAMETOOLONG', 'ENXIO', 'ENODEV']);

/**
 * One line for a failed file operation on `path` (which the caller names: never a temporary
 * path the user did not ask for). Reading an input: InputError when the path itself is wrong
 * (missing, a directory, a link where none may be: exit code 2); everything else, and every
 * failed write, is the machine's (permissions, space, I/O errors: EnvironmentError, exit code
 * 3). Anything that is not a Node file-system error is returned as it is.
 */
export function fileError(path: string, verb: string, e: unknown, side: 'input' | 'output' = 'input'): unknown {
  const cause = (e as { cause?: NodeJS.ErrnoException } | undefined)?.cause;
  const err = cause?.syscall ? cause : (e as NodeJS.ErrnoException | undefined);
  const code = err?.code;
  if (!code || !err.syscall) return e;
  const reason = IO_REASONS[code] ?? err.message.replace(/^[A-Z0-9_]+: /, '').replace(/, .*$/, '');
  const message = `${path}: cannot ${verb}: ${reason} (${code})`;
  return side === 'input' && INPUT_CODES.has(code) ? new InputError(message, code) : new EnvironmentError(message, code);
}

/** An integer setting from the environment (MARLIN_FP4_*): a bad value is a usage error (exit code 2). */
export function envInteger(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!/^\s*\d+\s*$/.test(raw) || n < min || n > max) throw new InputError(`${name}=${raw}: must be a whole number from ${min} to ${max}`);
  return n;
}
