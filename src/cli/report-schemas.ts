// The published shape of every --json report: zod schemas from which schemas/<report>.schema.json
// (JSON Schema, draft 2020-12) are generated (`npm run schemas`). Objects are strict, so a field
// added to a report without its schema fails the tests that validate real reports against these;
// the type checks at the bottom keep the TypeScript interfaces and the schemas in step.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { ConvertReport } from '../convert/convert.js';
import type { InspectReport } from '../inspect/inspect.js';
import type { UploadReport } from '../publish/upload.js';
import type { VerifyReport } from '../verify/report.js';
import { SCHEMA_VERSION, type ReportKind } from './json-report.js';

const int = z.int().min(0);
/** Errors can be infinite, which JSON writes as null. */
const errNum = z.number().nullable();
const layout = z.enum(['v1', 'v2']);
const dtype = z.enum(['float16', 'bfloat16']);

const header = <K extends ReportKind>(report: K) => ({
  report: z.literal(report),
  schema_version: z.literal(SCHEMA_VERSION).describe('changes when a field is removed or changes meaning'),
  tool: z.strictObject({ name: z.literal('marlin-fp4'), version: z.string() }),
});

const hubSource = z
  .strictObject({
    repo: z.string(),
    revision: z.string(),
    commit: z.string().regex(/^[0-9a-f]{40}$/),
    files: z.array(z.string()),
    bytes: int,
    downloaded_bytes: int,
    lfs_sha256: z.record(z.string(), z.string().regex(/^[0-9a-f]{64}$/)).describe('sha256 the Hub publishes per LFS file'),
  })
  .describe('the Hub repo a model argument was resolved from');

const layerRecord = z.strictObject({
  name: z.string(),
  kind: z.enum(['linear', 'moe-w13', 'moe-w2']),
  layout: z.string(),
  activation_dtype: z.string(),
  n: int,
  k: int,
  np: int,
  kp: int,
  sf: z.number(),
  experts: int.optional(),
  hidden: int.optional(),
  intermediate: int.optional(),
  gated: z.boolean().optional().describe('MoE stacks: gate+up experts (true) or up-only ones, w13 = up alone (false; FORMAT.md section 6.2)'),
  zeroed_scales: int,
  subnormal_scales: int,
  fused_group: z.string().optional().describe("the fused group (q/k/v, gate/up) whose sf and global scale this module shares"),
  reencoded: z
    .strictObject({
      scales: int,
      changed: int,
      underflowed: int,
      max_relative_change: z.number(),
      source_global: z.number().optional(),
      shared_global: z.number().optional(),
      experts: int.optional(),
    })
    .optional()
    .describe('block scales re-encoded onto a shared global scale (FORMAT.md section 8.1)'),
  scheme: z.enum(['nvfp4', 'mxfp4']).optional().describe('written for MXFP4 layers only (FORMAT.md section 5); absent means NVFP4'),
  group_size: int.optional().describe('with scheme: weights per scale along K (32)'),
  bias: z.boolean().optional().describe('with scheme: the stack carries a bias (gpt-oss `Q_bias`)'),
  interleaved: z.boolean().optional().describe('with scheme: gpt-oss w13, gate and up rows interleaved as the checkpoint has them'),
});

const gemmCheck = z.strictObject({
  m: int,
  expert: int.optional(),
  part: z.string().optional(),
  rel_err: errNum.describe("the largest per-column error, judged against the tolerance"),
  worst_column: z.int().optional().describe('the output column (of this part) where rel_err was found; -1 when not finite'),
  max_abs_err: errNum,
  frobenius_rel_err: errNum.optional().describe('the whole-matrix relative Frobenius error (information)'),
  rel_err_vs_exact: errNum.optional(),
  pass: z.boolean(),
  error: z.string().optional(),
});

const verifyBody = {
  converted: z.string(),
  source: z.string(),
  source_files: z
    .strictObject({
      path: z.string(),
      named: z.boolean().describe('named with --source (else the path the manifest records)'),
      recorded_path: z.string().nullable(),
      matches_manifest: z.boolean().nullable().describe('whether the shards are the ones the manifest records (null: it records none)'),
      shards: z.array(z.strictObject({ name: z.string(), bytes: int, sha256: z.string().regex(/^[0-9a-f]{64}$/) })),
    })
    .optional()
    .describe('the source verified against, with its checksums (when the integrity check ran)'),
  checks: z.array(z.enum(['integrity', 'structure', 'gemm'])),
  layout,
  activation_dtype: dtype,
  device: z.enum(['cpu', 'cuda']),
  reference_engine: z.string(),
  m: z.array(int),
  tolerance: z.number(),
  layers_checked: int,
  layers_gemm: int,
  tensors_checked: int,
  copied_checked: int,
  gemms: int,
  layers: z.array(
    z.strictObject({
      name: z.string(),
      kind: z.enum(['linear', 'moe-w13', 'moe-w2']),
      n: int.optional(),
      k: int.optional(),
      np: int.optional(),
      kp: int.optional(),
      sf: z.number().optional(),
      experts: int.optional(),
      errors: z.array(z.string()),
      zeroed_scales: int,
      fused_group: z.string().optional(),
      reencoded_max_relative_change: z.number().optional(),
      gemm: z.array(gemmCheck).optional(),
      worst: z.array(z.strictObject({ m: int, rel_err: errNum, max_abs_err: errNum })).optional(),
      pass: z.boolean(),
    }),
  ),
  errors: z.array(z.string()),
  warnings: z.array(z.string()),
  failed_layers: z.array(z.string()),
  passed: z.boolean(),
  seconds: z.number(),
  stages: z.record(z.string(), z.number()).describe('seconds per stage, summed over the lanes that run side by side'),
  bytes_read: int,
  peak_rss_bytes: int,
};
const verifyReport = z.strictObject(verifyBody);

const uploadBody = {
  repo: z.string(),
  branch: z.string(),
  commit: z.string(),
  commit_url: z.string(),
  created: z.boolean(),
  private: z.boolean().optional(),
  files: z.array(z.strictObject({ name: z.string(), bytes: int, sha256: z.string().optional(), lfs: z.boolean() })),
  bytes: int,
  uploaded_bytes: int.describe('LFS bytes sent by this run'),
  verified_files: int.describe("files whose size and sha256 (or git blob id) on the Hub equal the manifest's"),
  seconds: z.number(),
};
const uploadReport = z.strictObject(uploadBody);

const convertBody = {
  input: z.string(),
  output: z.string(),
  flavour: z.string(),
  scheme: z.enum(['nvfp4', 'mxfp4']).describe('the FP4 scheme of the source (FORMAT.md sections 1 and 5)'),
  quant_algo: z.string().describe('the source algorithm: NVFP4, W4A16_NVFP4 or MIXED_PRECISION (ModelOpt); NVFP4 for compressed-tensors'),
  layout,
  activation_dtype: dtype,
  device: z.enum(['cpu', 'cuda']),
  shards: int,
  tensors: int,
  converted_layers: int,
  copied_tensors: int,
  ignored_modules: z.array(z.string()),
  bytes_in: int,
  bytes_out: int,
  seconds: z.number(),
  peak_rss_bytes: int,
  warnings: z.array(z.string()),
  layers: z.array(layerRecord),
};

const problem = z.strictObject({
  kind: z.enum(['shape', 'missing', 'malformed', 'global-scale', 'fused-global-scale', 'block-scale', 'dtype', 'group-size', 'v1-bfloat16-subnormal', 'metadata']),
  layout: layout.optional(),
  message: z.string(),
});

const inspectBody = {
  model: z.string().describe('the model argument as given'),
  hub: hubSource.optional(),
  path: z.string(),
  format: z.enum(['nvfp4', 'mxfp4', 'marlin-fp4', 'other']),
  flavour: z.enum(['modelopt', 'compressed-tensors', 'gpt-oss']).optional(),
  description: z.string(),
  marlin: z.strictObject({ layout: z.string(), activation_dtype: z.string() }).optional(),
  architecture: z.string().optional(),
  model_type: z.string().optional(),
  torch_dtype: z.string().optional(),
  shards: z.array(z.strictObject({ file: z.string(), bytes: int, tensors: int })),
  total_bytes: int,
  tensors: int,
  other_files: z.array(z.string()),
  quantized: z
    .strictObject({
      dense: int,
      dense_shapes: z.array(z.strictObject({ n: int, k: int, count: int })),
      moe_layers: int,
      moe_shapes: z.array(z.strictObject({ experts: int, hidden: int, intermediate: int, gated: z.boolean(), count: int })),
      ignored: z.array(z.string()),
    })
    .optional(),
  conversion: z
    .strictObject({
      activation_dtype: dtype,
      activation_dtype_from: z.enum(['option', 'config.json', 'assumed']),
      converted: z.strictObject({ tensors: int, bytes: int }),
      passed_through: z.strictObject({ tensors: int, bytes: int }),
      layouts: z.array(
        z.strictObject({ layout, shapes_ok: z.boolean(), tensor_bytes: int.optional(), tensors: int.optional(), unavailable: z.string().optional() }),
      ),
    })
    .optional(),
  scales: z
    .strictObject({
      activation_dtype: dtype,
      tensors_scanned: int,
      invalid_tensors: int,
      zeroed_v2: int,
      subnormal: int,
      layers: z.array(z.strictObject({ name: z.string(), kind: z.enum(['linear', 'moe-w13', 'moe-w2']), sf_v2: z.number(), zeroed_v2: int, subnormal: int })),
    })
    .optional(),
  marlin_layers: z
    .strictObject({
      from: z.enum(['shard metadata', 'manifest', 'none']),
      layers: int,
      zeroed_scales: int.optional(),
      subnormal_scales: z.strictObject({ count: int, layers: int, from: z.enum(['manifest', 'scan']) }).optional(),
    })
    .optional(),
  modules: z
    .array(
      z.strictObject({
        name: z.string(),
        kind: z.enum(['linear', 'moe-experts', 'other']),
        fate: z.enum(['converted', 'passed-through', 'refused']),
        reason: z.string().optional(),
        v1_refused: z.string().optional(),
        tensors: int,
        bytes: int,
      }),
    )
    .optional()
    .describe('every module (tensor-name prefix) of an NVFP4 checkpoint and what convert does with it (layout v2)'),
  problems: z.array(problem),
  verdict: z.string(),
  convertible: z.boolean(),
  seconds: z.number(),
};

export const REPORT_SCHEMAS = {
  convert: z
    .strictObject({
      ...header('convert'),
      ...convertBody,
      hub: hubSource.optional(),
      verify: verifyReport.optional().describe('with --verify or --push-to-hub'),
      upload: uploadReport.optional().describe('with --push-to-hub'),
    })
    .describe('marlin-fp4 convert --json'),
  verify: z.strictObject({ ...header('verify'), ...verifyBody }).describe('marlin-fp4 verify --json'),
  inspect: z.strictObject({ ...header('inspect'), ...inspectBody }).describe('marlin-fp4 inspect --json'),
  upload: z.strictObject({ ...header('upload'), ...uploadBody }).describe('marlin-fp4 upload --json'),
} as const;

/** The JSON Schema of one report (what `npm run schemas` writes to schemas/). */
export function jsonSchema(kind: ReportKind): Record<string, unknown> {
  const schema = z.toJSONSchema(REPORT_SCHEMAS[kind], { target: 'draft-2020-12', io: 'output' }) as Record<string, unknown>;
  return { title: `marlin-fp4 ${kind} --json report`, ...schema };
}

export function writeSchemas(dir: string): string[] {
  mkdirSync(dir, { recursive: true });
  return (Object.keys(REPORT_SCHEMAS) as ReportKind[]).map((k) => {
    const file = join(dir, `${k}.schema.json`);
    writeFileSync(file, `${JSON.stringify(jsonSchema(k), null, 2)}\n`);
    return file;
  });
}

// The interfaces must satisfy their schemas (compile-time only).
type Body<T extends z.ZodType> = Omit<z.output<T>, 'report' | 'schema_version' | 'tool'>;
const typeChecks = <A extends B, B>() => true;
void typeChecks<VerifyReport, z.output<typeof verifyReport>>;
void typeChecks<UploadReport, z.output<typeof uploadReport>>;
void typeChecks<ConvertReport, Omit<Body<(typeof REPORT_SCHEMAS)['convert']>, 'hub' | 'verify' | 'upload'>>;
void typeChecks<InspectReport, Omit<Body<(typeof REPORT_SCHEMAS)['inspect']>, 'model' | 'hub'>>;
