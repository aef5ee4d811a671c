// Entry point: builds the command line, runs it, and turns every failure into one line on
// stderr and a documented exit code (0 ok, 1 verification failed, 2 bad input, 3 environment,
// 4 internal error).
import { Command, CommanderError } from 'commander';
import { EnvironmentError, EXIT, InputError, VerificationFailed } from '../errors.js';
import { abandonStagedOutputs, liveStagedOutputs } from '../convert/output-dir.js';
import { nativeCallsSettled } from '../transform/addon.js';
import { VERSION } from '../version.js';
import { benchCommand } from './bench-command.js';
import { convertCommand } from './convert-command.js';
import { inspectCommand } from './inspect-command.js';
import { consoleOutput, type Output } from './output.js';
import { verifyCommand } from './verify-command.js';
import { uploadCommand } from './upload-command.js';
import { annotation, appendStepSummary, inGithubActions } from './ci-output.js';
import { failureMarkdown } from './step-summary.js';

// Usage errors (printed by commander) are annotations too under GitHub Actions, and go into the
// step summary like the others.
const commanderOutput = {
  writeErr: (s: string) => process.stderr.write(s),
  outputError: (s: string, write: (s: string) => void) => {
    if (s.startsWith('error: ')) lastError = s.slice(7).trim();
    write(inGithubActions() && s.startsWith('error: ') ? `${annotation('error', s.slice(7).trim())}\n` : s);
  },
};

export function buildProgram(out: Output): Command {
  const program = new Command('marlin-fp4')
    .description(
      'Convert NVFP4 checkpoints (ModelOpt, compressed-tensors) into Marlin-ready checkpoints for vLLM on ' +
        'Ampere/Ada/Hopper GPUs, once and offline, and verify the result.',
    )
    .version(VERSION, '-V, --version')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput(commanderOutput);
  for (const command of [convertCommand(out), verifyCommand(out), inspectCommand(out), benchCommand(out), uploadCommand(out)]) {
    program.addCommand(command.exitOverride().configureOutput(commanderOutput));
  }
  return program;
}

function removeStagedOutputs(): void {
  for (const s of liveStagedOutputs()) {
    // Synchronous: the process exits right after.
    void s.discard();
  }
}

// The exit code of the signal being handled: from then on the command's own outcome (an error
// from files removed under it, or a commit refused) is not reported; the signal's code is.
let signalled: number | undefined;

function onSignal(signal: NodeJS.Signals, code: number): void {
  process.once(signal, () => {
    signalled = code;
    const staged = abandonStagedOutputs();
    process.stderr.write(`\ninterrupted (${signal})${staged.length ? ': removing the partial output' : ''}\n`);
    // The native calls in flight finish first (a few ms to a few hundred): exiting under a GPU
    // call can end the process by a signal, not `code`. The staged output is removed after
    // them too, so nothing they still write recreates a file in it.
    nativeCallsSettled(5000)
      .then(() => Promise.all(staged.map((s) => s.discard())))
      .finally(() => process.exit(code));
  });
}

export async function main(argv: string[]): Promise<number> {
  // `marlin-fp4 … | head` closes stdout early: that is not an error worth a stack trace.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(EXIT.ok);
    throw e;
  });
  const out = consoleOutput();
  onSignal('SIGINT', 130);
  onSignal('SIGTERM', 143);
  const program = buildProgram(out);
  const code = await run(program, argv, out);
  // Under GitHub Actions the job summary says which command failed and why.
  if (code !== EXIT.ok && lastError) appendStepSummary(failureMarkdown(argv[2] ?? '', lastError, code).join('\n'));
  return code;
}

let lastError: string | undefined;

async function run(program: Command, argv: string[], consoleOut: Output): Promise<number> {
  const out: Output = { ...consoleOut, error: (s) => ((lastError = s), consoleOut.error(s)) };
  try {
    await program.parseAsync(argv);
    return EXIT.ok;
  } catch (e) {
    if (signalled !== undefined) return signalled;
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return EXIT.ok;
      return EXIT.input; // commander already printed the message
    }
    if (e instanceof VerificationFailed) {
      out.error(e.message);
      return EXIT.verifyFailed;
    }
    if (e instanceof InputError) {
      out.error(e.message);
      return EXIT.input;
    }
    if (e instanceof EnvironmentError) {
      out.error(e.message);
      return EXIT.environment;
    }
    const err = e as NodeJS.ErrnoException;
    if (err?.code && err.syscall) {
      // File-system failures (ENOSPC, EACCES, …) are the environment's, not a bug.
      out.error(`${err.message}`);
      return EXIT.environment;
    }
    out.error(`internal error: ${err?.stack ?? String(e)}`);
    return EXIT.internal;
  } finally {
    removeStagedOutputs();
  }
}
