// The model card (README.md) convert writes into the output: Hub metadata in YAML front matter
// (base_model with base_model_relation quantized, the source's licence carried over, tags),
// then what the checkpoint is (scheme, layout, activation dtype), how it was checked, how to
// serve it and where it came from.
//
// The source's own card is not merged into ours: it is kept byte for byte as
// SOURCE_MODEL_CARD.md and linked. Its instructions (how to load and serve the NVFP4 checkpoint,
// benchmark tables of that checkpoint) would read as ours if inlined below our header, its front
// matter would clash with ours, and a verbatim copy keeps the provenance exact. Only its
// `license`, `license_name`, `license_link` and `pipeline_tag` move into our front matter.
//
// The verification section is a marked block: `convert --verify` fills it after verify passed
// (recordVerification), and the manifest's entry for README.md is updated with it.
import { createHash } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export const CARD_FILE = 'README.md';
/** The source's model card, kept verbatim beside ours. */
export const SOURCE_CARD_FILE = 'SOURCE_MODEL_CARD.md';
const LICENCE_FILE = /^(LICENSE|LICENCE)([._-].*)?$/i;
const VERIFY_START = '<!-- marlin-fp4:verify -->';
const VERIFY_END = '<!-- /marlin-fp4:verify -->';

export interface CardSource {
  /** The Hub repo id the checkpoint was converted from, when it came from the Hub. */
  repo?: string;
  commit?: string;
  /** The source directory's name, when it was local. */
  name: string;
  /** 'modelopt' or 'compressed-tensors'. */
  format: string;
  /** Text of the source's README.md, when it has one. */
  card?: string;
  /** The licence files the source has (carried into the output). */
  licenceFiles: string[];
}

export interface CardInfo {
  /** What the checkpoint is called: the target repo id, or the output directory's name. */
  name: string;
  /** The Hub repo it is converted for (convert --push-to-hub). */
  target_repo?: string;
  source: CardSource;
  layout: string;
  activation_dtype: string;
  architecture?: string;
  converted_layers: number;
  tool_version: string;
}

/** What the card says about a passed verification. */
export interface CardVerification {
  layers_checked: number;
  layers_gemm: number;
  gemms: number;
  m: number[];
  tolerance: number;
  worst_rel_err: number;
  device: string;
  reference_engine: string;
}

/** Top-level scalar keys of a card's YAML front matter (all we carry over; no YAML library needed). */
export function frontMatter(card: string | undefined): Record<string, string> {
  const m = card ? /^---\r?\n([\s\S]*?)\r?\n---\r?\n?/.exec(card) : null;
  const out: Record<string, string> = {};
  if (!m) return out;
  for (const line of m[1]!.split(/\r?\n/)) {
    const kv = /^([A-Za-z_][A-Za-z0-9_]*):[ \t]*(.+?)[ \t]*$/.exec(line);
    if (!kv) continue;
    let v = kv[2]!;
    if ((v.startsWith('"') && v.endsWith('"')) || (v.startsWith("'") && v.endsWith("'"))) v = v.slice(1, -1);
    out[kv[1]!] = v;
  }
  return out;
}

// JSON strings are valid YAML double-quoted scalars: no escaping rules of our own.
const yaml = (v: string) => JSON.stringify(v);

/** The licence: the source card's `license` field, else `other` pointing at a carried LICENSE file. */
function licence(src: CardSource): Record<string, string> {
  const fm = frontMatter(src.card);
  const out: Record<string, string> = {};
  if (fm.license) {
    out.license = fm.license;
    if (fm.license_name) out.license_name = fm.license_name;
    if (fm.license_link) out.license_link = fm.license_link;
    else if (fm.license === 'other' && src.licenceFiles[0]) out.license_link = src.licenceFiles[0];
  } else if (src.licenceFiles[0]) {
    out.license = 'other';
    out.license_link = src.licenceFiles[0];
  }
  return out;
}

export function verificationLines(v: CardVerification | undefined): string[] {
  if (!v) {
    return [
      'Not verified yet: `marlin-fp4 verify <dir>` (or `convert --verify`) checks every converted layer byte for byte',
      'against the source and compares GEMMs on the Marlin layout with a reference.',
    ];
  }
  const where = v.device === 'cuda' ? 'GPU' : 'CPU';
  return [
    '`marlin-fp4 verify` **passed**:',
    '',
    `- structure: ${v.layers_checked} converted layers unpacked and decoded back, byte-exact against the source`,
    `- GEMMs: ${v.layers_gemm} layers at M = ${v.m.join(', ')} (${v.gemms} GEMMs on the ${where}, reference ${v.reference_engine}),` +
      ` worst relative Frobenius error ${v.worst_rel_err === 0 ? '0' : v.worst_rel_err.toExponential(2)} (bound ${v.tolerance})`,
  ];
}

export function renderModelCard(info: CardInfo, verification?: CardVerification): string {
  const src = info.source;
  const fm = frontMatter(src.card);
  const meta: string[] = ['---'];
  if (src.repo) meta.push(`base_model: ${yaml(src.repo)}`, 'base_model_relation: quantized');
  for (const [k, v] of Object.entries(licence(src))) meta.push(`${k}: ${yaml(v)}`);
  if (fm.pipeline_tag) meta.push(`pipeline_tag: ${yaml(fm.pipeline_tag)}`);
  meta.push('tags:', ...['marlin-fp4', 'nvfp4', 'fp4', 'marlin', 'vllm'].map((t) => `- ${t}`), '---');

  const from = src.repo ? `[${src.repo}](https://huggingface.co/${src.repo})` : `\`${src.name}\``;
  const flavour = src.format === 'modelopt' ? 'NVIDIA ModelOpt' : 'compressed-tensors (llm-compressor)';
  const lines = [
    ...meta,
    '',
    `# ${info.name}`,
    '',
    `${from} (${flavour} NVFP4), with its FP4 weights already in the **Marlin** layout that vLLM's FP4 Marlin`,
    'kernel reads on Ampere, Ada and Hopper GPUs, so nothing is repacked at load time. The values are the',
    "source's: the weights, block scales and global scales are rearranged, not requantized.",
    '',
    '| | |',
    '|---|---|',
    `| scheme | NVFP4: FP4 E2M1 weights, FP8 E4M3 block scales per 16 weights, one FP32 global scale per tensor |`,
    `| layout | Marlin FP4 ${info.layout} (\`quantization_config.quant_method: marlin_fp4\`) |`,
    `| activation dtype | ${info.activation_dtype} |`,
    ...(info.architecture ? [`| architecture | ${info.architecture} |`] : []),
    `| converted layers | ${info.converted_layers} |`,
    `| converted with | marlin-fp4 ${info.tool_version} |`,
    '',
    '## Serving',
    '',
    '```sh',
    'pip install marlin-fp4-vllm     # the vLLM plugin that loads quant_method "marlin_fp4"',
    `vllm serve ${info.target_repo ?? '<this checkpoint: its directory, or its Hub repo id>'}`,
    '```',
    '',
    'The plugin registers the `marlin_fp4` quantization method with vLLM and hands these tensors to the Marlin',
    'FP4 kernel as they are. Plain transformers cannot load this checkpoint (it does not know the layout).',
    '',
    '## Verification',
    '',
    VERIFY_START,
    ...verificationLines(verification),
    VERIFY_END,
    '',
    '## Provenance',
    '',
    src.repo
      ? `- source: ${from}${src.commit ? ` at commit \`${src.commit}\`` : ''}; its shards' sha256 are in \`marlin_fp4_manifest.json\`, checked against the Hub's LFS metadata when converted with checksums`
      : `- source: the local directory \`${src.name}\`; its shards' sha256 are in \`marlin_fp4_manifest.json\``,
    '- every file of this checkpoint is listed with its size and sha256 in `marlin_fp4_manifest.json`',
    ...(src.card ? [`- the source's model card, unchanged: [${SOURCE_CARD_FILE}](${SOURCE_CARD_FILE})`] : []),
    ...(src.licenceFiles.length ? [`- licence: the source's terms apply (${src.licenceFiles.map((f) => `[${f}](${f})`).join(', ')})`] : []),
    '',
  ];
  return lines.join('\n');
}

/** The source's licence files among a directory's other files. */
export function licenceFiles(otherFiles: string[]): string[] {
  return otherFiles.filter((f) => !f.includes('/') && LICENCE_FILE.test(f));
}

export async function writeModelCard(outDir: string, info: CardInfo): Promise<string[]> {
  await writeFile(join(outDir, CARD_FILE), renderModelCard(info));
  const written = [CARD_FILE];
  if (info.source.card !== undefined) {
    await writeFile(join(outDir, SOURCE_CARD_FILE), info.source.card);
    written.push(SOURCE_CARD_FILE);
  }
  return written;
}

/**
 * Fills the card's verification block of a finished output and updates README.md's entry in
 * the manifest (size, sha256) so that the integrity check still holds. Each file is replaced
 * by a rename: a crash leaves the old or the new version, never half of one.
 */
export async function recordVerification(dir: string, manifestFile: string, v: CardVerification): Promise<void> {
  const cardPath = join(dir, CARD_FILE);
  const card = await readFile(cardPath, 'utf8').catch(() => undefined);
  const a = card?.indexOf(VERIFY_START) ?? -1;
  const b = card?.indexOf(VERIFY_END) ?? -1;
  if (card === undefined || a < 0 || b < a) return; // not our card (e.g. written by an older version)
  const next = `${card.slice(0, a + VERIFY_START.length)}\n${verificationLines(v).join('\n')}\n${card.slice(b)}`;
  const manifestPath = join(dir, manifestFile);
  // (Only its file list is touched; typed here so this module needs nothing of write-files.ts.)
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as { files: { name: string; bytes: number; sha256?: string }[] };
  const entry = manifest.files.find((f) => f.name === CARD_FILE);
  if (entry) {
    entry.bytes = Buffer.byteLength(next);
    if (entry.sha256 !== undefined) entry.sha256 = createHash('sha256').update(next).digest('hex');
  }
  await replace(cardPath, next);
  await replace(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
}

async function replace(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}
