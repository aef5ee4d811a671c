// Which NVFP4 or MXFP4 flavour a checkpoint is, from config.json's quantization_config and/or
// hf_quant_config.json, and which modules its exclude/ignore list keeps unquantized.
import { join } from 'node:path';
import { InputError } from '../errors.js';
import type { Checkpoint } from './model-dir.js';
import { QUANT_METHOD } from '../format/quant-config.js';

export type FlavourKind = 'modelopt' | 'compressed-tensors';

export interface Flavour {
  kind: FlavourKind;
  /** Modules that stay unquantized; see isIgnored. */
  ignore: string[];
  groupSize: number;
  /** The original quantization config, carried into the output's config.json. */
  original: Record<string, unknown>;
}

/**
 * An MXFP4 checkpoint (FORMAT.md section 5): gpt-oss's own layout (`quant_method: mxfp4`,
 * experts as `…_blocks` / `…_scales` / `…_bias`), compressed-tensors `mxfp4-pack-quantized`
 * (`weight_packed` + U8 `weight_scale`), or ModelOpt `quant_algo: MXFP4` (detected, not
 * converted: its tensor layout was not read).
 */
export interface Mxfp4Flavour {
  scheme: 'mxfp4';
  kind: 'gpt-oss' | 'compressed-tensors' | 'modelopt';
  /** Modules that stay unquantized (gpt-oss's modules_to_not_convert, compressed-tensors' ignore). */
  ignore: string[];
  /** The group size the config states (32 when it states none). */
  groupSize: number;
  original: Record<string, unknown>;
}

/** What a checkpoint is, as far as config files tell; `inspect` reports it, convert needs NVFP4 or MXFP4. */
export type Detected =
  | ({ format: 'nvfp4' } & Flavour)
  | ({ format: 'mxfp4' } & Mxfp4Flavour)
  | { format: 'marlin-fp4'; layout: string; dtype: string; original: Record<string, unknown> }
  | { format: 'other'; description: string };

const obj = (v: unknown): Record<string, unknown> | undefined =>
  typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
const lower = (v: unknown) => (typeof v === 'string' ? v.toLowerCase() : '');

/**
 * When config.json's quantization_config and hf_quant_config.json declare different
 * quantizations (e.g. GPTQ and NVFP4), what each says; loaders disagree on which one wins, so
 * neither is taken.
 */
export function quantConflict(ckpt: Pick<Checkpoint, 'config' | 'hfQuantConfig'>): { config: string; hfQuant: string } | undefined {
  const qc = obj(ckpt.config.quantization_config);
  const hq = obj(ckpt.hfQuantConfig?.quantization);
  if (!qc || !hq) return undefined;
  const method = lower(qc.quant_method);
  const hfQuant = `quant_algo ${String(hq.quant_algo ?? '(none)')}`;
  if (method !== 'modelopt') return { config: `quant_method ${String(qc.quant_method ?? '(none)')}`, hfQuant };
  if (qc.quant_algo !== undefined && lower(qc.quant_algo) !== lower(hq.quant_algo)) return { config: `quant_algo ${String(qc.quant_algo)}`, hfQuant };
  return undefined;
}

export function detectFormat(ckpt: Pick<Checkpoint, 'config' | 'hfQuantConfig'>): Detected {
  const qc = obj(ckpt.config.quantization_config);
  const hq = obj(ckpt.hfQuantConfig?.quantization);
  const conflict = quantConflict(ckpt);
  if (conflict) {
    return { format: 'other', description: `config.json declares ${conflict.config} but hf_quant_config.json declares ${conflict.hfQuant}` };
  }
  if (qc && lower(qc.quant_method) === QUANT_METHOD) {
    return { format: 'marlin-fp4', layout: String(qc.layout ?? '?'), dtype: String(qc.activation_dtype ?? '?'), original: qc };
  }
  // ModelOpt: quant_algo NVFP4 in config.json (newer exports) or hf_quant_config.json.
  const mo = qc && lower(qc.quant_method) === 'modelopt' ? qc : hq;
  if (mo && lower(mo.quant_algo) === 'nvfp4') {
    return {
      format: 'nvfp4',
      kind: 'modelopt',
      ignore: [...strings(mo.exclude_modules), ...strings(mo.ignore)],
      groupSize: typeof mo.group_size === 'number' ? mo.group_size : 16,
      original: qc ?? (ckpt.hfQuantConfig as Record<string, unknown>),
    };
  }
  if (mo && lower(mo.quant_algo) === 'mxfp4') return mxfp4('modelopt', strings(mo.exclude_modules), 32, mo);
  if (qc && lower(qc.quant_method) === 'compressed-tensors') {
    const groups = Object.values(obj(qc.config_groups) ?? {}).map(obj).filter((g) => g !== undefined);
    const formats = [qc.format, ...groups.map((g) => g.format)].map(lower).filter(Boolean);
    if (formats.includes('nvfp4-pack-quantized')) {
      const w = groups.map((g) => obj(g.weights)).find((x) => x);
      return {
        format: 'nvfp4',
        kind: 'compressed-tensors',
        ignore: strings(qc.ignore),
        groupSize: typeof w?.group_size === 'number' ? w.group_size : 16,
        original: qc,
      };
    }
    if (formats.includes('mxfp4-pack-quantized')) {
      const w = groups.map((g) => obj(g.weights)).find((x) => x);
      return mxfp4('compressed-tensors', strings(qc.ignore), typeof w?.group_size === 'number' ? w.group_size : 32, qc);
    }
    return { format: 'other', description: `compressed-tensors with format ${formats.join(', ') || '(none)'}` };
  }
  if (qc && lower(qc.quant_method) === 'mxfp4') return mxfp4('gpt-oss', strings(qc.modules_to_not_convert), 32, qc);
  if (qc) return { format: 'other', description: `quant_method ${String(qc.quant_method ?? '(none)')}` };
  return { format: 'other', description: 'no quantization_config in config.json and no hf_quant_config.json' };
}

function mxfp4(kind: Mxfp4Flavour['kind'], ignore: string[], groupSize: number, original: Record<string, unknown>): Detected {
  return { format: 'mxfp4', scheme: 'mxfp4', kind, ignore, groupSize, original };
}

/** A checkpoint convert can take: NVFP4 (with its flavour) or MXFP4. */
export type Convertible = { scheme: 'nvfp4'; flavour: Flavour } | { scheme: 'mxfp4'; flavour: Mxfp4Flavour };

/** The checkpoint's scheme and flavour, or a one-line error that says what it is instead. */
export function requireConvertible(ckpt: Pick<Checkpoint, 'config' | 'hfQuantConfig' | 'dir'>): Convertible {
  const d = detectFormat(ckpt);
  if (d.format !== 'mxfp4') return { scheme: 'nvfp4', flavour: requireNvfp4(ckpt) };
  if (d.kind === 'modelopt') throw new InputError(`${ckpt.dir}: a ModelOpt MXFP4 checkpoint; marlin-fp4 converts gpt-oss and compressed-tensors MXFP4 (ModelOpt's MXFP4 tensor layout is not known to it)`);
  if (d.groupSize !== 32) throw new InputError(`${ckpt.dir}: MXFP4 group size ${d.groupSize} is not 32`);
  const { format: _format, ...flavour } = d;
  return { scheme: 'mxfp4', flavour };
}

/** The NVFP4 flavour, or a one-line error that says what the checkpoint is instead. */
export function requireNvfp4(ckpt: Pick<Checkpoint, 'config' | 'hfQuantConfig' | 'dir'>): Flavour {
  const conflict = quantConflict(ckpt);
  if (conflict) {
    throw new InputError(
      `${join(ckpt.dir, 'config.json')} declares ${conflict.config} but ${join(ckpt.dir, 'hf_quant_config.json')} declares ${conflict.hfQuant}: ` +
        'conflicting quantization declarations (remove the one that is wrong)',
    );
  }
  const d = detectFormat(ckpt);
  switch (d.format) {
    case 'nvfp4':
      if (d.groupSize !== 16) throw new InputError(`${ckpt.dir}: NVFP4 group size ${d.groupSize} is not 16`);
      return d;
    case 'marlin-fp4':
      throw new InputError(`${ckpt.dir}: already a Marlin FP4 checkpoint (layout ${d.layout}, ${d.dtype}); nothing to convert`);
    case 'mxfp4':
      throw new InputError(`${ckpt.dir}: an MXFP4 checkpoint; marlin-fp4 converts NVFP4 only`);
    default:
      throw new InputError(`${ckpt.dir}: not an NVFP4 checkpoint (${d.description})`);
  }
}

function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`);
}

/**
 * Whether a module (a linear's prefix) is on the flavour's exclude/ignore list. ModelOpt lists
 * shell-style wildcards; compressed-tensors lists names or `re:` regular expressions matched at
 * the start of the name (Python's re.match).
 */
export function isIgnored(flavour: Pick<Flavour, 'ignore'>, module: string): boolean {
  return flavour.ignore.some((pattern) => {
    if (pattern.startsWith('re:')) {
      try {
        return new RegExp(`^(?:${pattern.slice(3)})`).test(module);
      } catch {
        throw new InputError(`quantization config: ignore pattern "${pattern}" is not a valid regular expression`);
      }
    }
    if (pattern === module) return true;
    return pattern.includes('*') || pattern.includes('?') ? globToRegExp(pattern).test(module) : false;
  });
}
