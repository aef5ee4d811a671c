// The Hugging Face Hub settings a user already has, read the way Python's huggingface_hub reads
// them, so one `hf auth login` or one CI secret serves both tools:
//   - boolean variables are true for 1/ON/YES/TRUE in any case, false otherwise (so
//     HF_HUB_OFFLINE=0, =false or =no is *off*);
//   - the token: HF_TOKEN (or the legacy HUGGING_FACE_HUB_TOKEN), else the file HF_TOKEN_PATH,
//     else HF_HOME/token (HF_HOME defaulting to $XDG_CACHE_HOME/huggingface, then
//     ~/.cache/huggingface), whitespace and line breaks removed, empty meaning none;
//   - HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), HF_ENDPOINT, HF_HUB_DISABLE_PROGRESS_BARS.
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../errors.js';

const TRUE_VALUES = new Set(['1', 'ON', 'YES', 'TRUE']);

/** huggingface_hub's `_is_true`: only 1/ON/YES/TRUE (any case) are true. */
export function envFlag(name: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env[name];
  return v !== undefined && TRUE_VALUES.has(v.trim().toUpperCase());
}

export function hfHome(env: NodeJS.ProcessEnv = process.env): string {
  const expand = (p: string) => (p === '~' || p.startsWith('~/') ? join(homedir(), p.slice(1)) : p);
  return expand(env.HF_HOME || join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'huggingface'));
}

export function tokenPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.HF_TOKEN_PATH || join(hfHome(env), 'token');
}

export interface HubToken {
  token: string;
  /** Where it came from, for messages: `HF_TOKEN` or the file's path. */
  from: string;
}

const clean = (s: string) => s.replace(/[\r\n]/g, '').trim();

/** The access token, or undefined when none is configured (anonymous access). */
export function hubToken(env: NodeJS.ProcessEnv = process.env): HubToken | undefined {
  for (const name of ['HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN']) {
    const v = env[name];
    if (v !== undefined && clean(v)) return check({ token: clean(v), from: name });
  }
  const path = tokenPath(env);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return undefined; // no file: anonymous, as huggingface_hub
  }
  return clean(text) ? check({ token: clean(text), from: path }) : undefined;
}

function check(t: HubToken): HubToken {
  if (!t.token.startsWith('hf_')) throw new InputError(`${t.from}: not a Hugging Face access token (they start with hf_)`);
  return t;
}

export function hubOffline(env: NodeJS.ProcessEnv = process.env): boolean {
  return envFlag('HF_HUB_OFFLINE', env) || envFlag('TRANSFORMERS_OFFLINE', env);
}

/** HF_ENDPOINT without a trailing slash, or undefined for the library's default (huggingface.co). */
export function hubEndpoint(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.HF_ENDPOINT ? env.HF_ENDPOINT.replace(/\/+$/, '') : undefined;
}

/** HF_HUB_DISABLE_PROGRESS_BARS=1 turns every progress display off, as it does in huggingface_hub. */
export function progressBarsDisabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return envFlag('HF_HUB_DISABLE_PROGRESS_BARS', env);
}
