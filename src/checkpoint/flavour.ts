// Which NVFP4 or MXFP4 flavour a checkpoint is, from config.json's quantization_config and/or
// hf_quant_config.json, which modules its exclude/ignore list keeps unquantized, and (ModelOpt
// MIXED_PRECISION) which scheme its per-layer table gives each module.
import { join } from 'node:path';
import { InputError } from '../errors.js';
import type { Checkpoint } from './model-dir.js';
import { CONVERTED_ALGOS, QUANT_METHOD } from '../format/quant-config.js';

export type FlavourKind = 'modelopt' | 'compressed-tensors';

/**
 * ModelOpt's algorithms that marlin-fp4 converts: NVFP4 (W4A4), W4A16_NVFP4 (weight-only,
 * no input scale) and MIXED_PRECISION (a per-layer table; its NVFP4 / W4A16_NVFP4 layers are
 * converted, the others pass through). compressed-tensors NVFP4 is reported as 'NVFP4'.
 */
export type QuantAlgo = 'NVFP4' | 'W4A16_NVFP4' | 'MIXED_PRECISION';

/** The per-layer algorithms whose tensors are packed NVFP4 (converted). */
export const NVFP4_ALGOS = CONVERTED_ALGOS;

export interface LayerScheme {
  quant_algo: string;
  group_size?: number;
  [key: string]: unknown;
}

export interface Flavour {
  kind: FlavourKind;
  algo: QuantAlgo;
  /** Modules that stay unquantized; see isIgnored. */
  ignore: string[];
  groupSize: number;
  /** MIXED_PRECISION's quantized_layers table (module name -> scheme), verbatim; see layerScheme. */
  layers?: Record<string, LayerScheme>;
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
  // ModelOpt: quant_algo in config.json (newer exports) or in hf_quant_config.json (older
  // ones, and exports whose config.json says only quant_method modelopt).
  const moConfig = qc && lower(qc.quant_method).startsWith('modelopt') ? qc : undefined;
  if (moConfig || hq) {
    const fromConfig = moConfig?.quant_algo !== undefined && moConfig.quant_algo !== null;
    const mo = fromConfig ? moConfig! : hq ?? moConfig!;
    const algo = String(mo.quant_algo ?? '').toUpperCase();
    const where = fromConfig ? 'config.json' : hq ? 'hf_quant_config.json' : 'config.json';
    if (algo === 'NVFP4' || algo === 'W4A16_NVFP4' || algo === 'MIXED_PRECISION') {
      const layers = obj(mo.quantized_layers) ?? obj(hq?.quantized_layers) ?? obj(moConfig?.quantized_layers);
      const table = layers ? (Object.fromEntries(Object.entries(layers).filter(([, v]) => obj(v))) as Record<string, LayerScheme>) : undefined;
      const nvfp4Entry = Object.values(table ?? {}).find((v) => NVFP4_ALGOS.includes(String(v.quant_algo).toUpperCase()));
      const groupSize = typeof mo.group_size === 'number' ? mo.group_size : typeof nvfp4Entry?.group_size === 'number' ? nvfp4Entry.group_size : 16;
      return {
        format: 'nvfp4',
        kind: 'modelopt',
        algo: algo as QuantAlgo,
        ignore: [...new Set([...strings(mo.exclude_modules), ...strings(mo.ignore), ...strings(hq?.exclude_modules), ...strings(moConfig?.ignore)])],
        groupSize,
        layers: algo === 'MIXED_PRECISION' ? (table ?? {}) : undefined,
        original: qc ?? (ckpt.hfQuantConfig as Record<string, unknown>),
      };
    }
    if (algo === 'MXFP4') return mxfp4('modelopt', strings(mo.exclude_modules), 32, mo);
    if (!qc || moConfig) {
      return { format: 'other', description: algo ? `ModelOpt quant_algo ${algo} (${where})` : `ModelOpt with no quant_algo in config.json or hf_quant_config.json` };
    }
  }
  if (qc && lower(qc.quant_method) === 'compressed-tensors') {
    const groups = Object.values(obj(qc.config_groups) ?? {}).map(obj).filter((g) => g !== undefined);
    const formats = [qc.format, ...groups.map((g) => g.format)].map(lower).filter(Boolean);
    if (formats.includes('nvfp4-pack-quantized')) {
      const w = groups.map((g) => obj(g.weights)).find((x) => x);
      return {
        format: 'nvfp4',
        kind: 'compressed-tensors',
        algo: 'NVFP4',
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

/** Why an NVFP4 flavour's config cannot be converted (group size, MIXED_PRECISION without a table), or undefined. */
export function flavourProblem(f: Flavour): string | undefined {
  if (f.groupSize !== 16) return `NVFP4 group size ${f.groupSize} is not 16`;
  if (f.algo === 'MIXED_PRECISION' && Object.keys(f.layers ?? {}).length === 0) {
    return 'quant_algo MIXED_PRECISION needs a non-empty quantized_layers table (none found in config.json or hf_quant_config.json)';
  }
  return undefined;
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
    case 'nvfp4': {
      const problem = flavourProblem(d);
      if (problem) throw new InputError(`${ckpt.dir}: ${problem}`);
      return d;
    }
    case 'marlin-fp4':
      throw new InputError(`${ckpt.dir}: already a Marlin FP4 checkpoint (layout ${d.layout}, ${d.dtype}); nothing to convert`);
    case 'mxfp4':
      throw new InputError(`${ckpt.dir}: an MXFP4 checkpoint; marlin-fp4 converts NVFP4 only`);
    default:
      throw new InputError(`${ckpt.dir}: not an NVFP4 checkpoint (${d.description})`);
  }
}

// Compiled once per pattern: findLinears asks for every packed tensor (tens of thousands in an MoE).
const globs = new Map<string, RegExp>();

function globToRegExp(glob: string): RegExp {
  let re = globs.get(glob);
  if (!re) {
    const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
    re = new RegExp(`^${body}$`);
    globs.set(glob, re);
  }
  return re;
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

/** The candidate table keys of a module: itself, and the `model.language_model.` / `language_model.model.` spelling swap. */
function spellings(module: string): string[] {
  const out = [module];
  if (module.startsWith('model.language_model.')) out.push(`language_model.model.${module.slice('model.language_model.'.length)}`);
  if (module.startsWith('language_model.model.')) out.push(`model.language_model.${module.slice('language_model.model.'.length)}`);
  return out;
}

/**
 * The MIXED_PRECISION table's scheme for a module, as vLLM's ModelOpt mixed-precision config
 * resolves it (quantization/modelopt.py `_resolve_quant_algo`): the module's own key; else a
 * key naming a module that contains it (`…mlp.experts` for `…mlp.experts.3.up_proj`); else a
 * key inside it (`…experts.0.up_proj` for a batched `…experts.up_proj`). Undefined when the
 * flavour has no table (every packed module is NVFP4 then) or the table does not list it.
 */
export function layerScheme(flavour: Flavour, module: string): LayerScheme | undefined {
  const t = flavour.layers;
  if (!t) return undefined;
  for (const m of spellings(module)) {
    if (t[m]) return t[m];
    const parts = m.split('.');
    for (let i = parts.length - 1; i > 0; i--) {
      const outer = t[parts.slice(0, i).join('.')];
      if (outer) return outer;
    }
    const inner = Object.keys(t).find((k) => k.startsWith(`${m}.`));
    if (inner) return t[inner];
  }
  return undefined;
}
