// Error kinds that decide the exit code. A user mistake is one line, never a stack trace.

/** Bad input or usage (exit code 2): the message names the file, tensor and reason. */
export class InputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InputError';
  }
}

/** The environment cannot do what was asked, e.g. no GPU for `--device cuda` (exit code 3). */
export class EnvironmentError extends Error {
  constructor(message: string) {
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
