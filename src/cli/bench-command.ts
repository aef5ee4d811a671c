// `marlin-fp4 bench`: what a converted model buys at inference time. Times our fast Marlin FP4
// GEMM and cuBLAS (dense bf16/fp16 weights) on the same shapes on the GPU and prints time,
// TFLOP/s, weight GB/s, the share of the measured copy bandwidth and the speed-up. The
// measuring is native (gemm_bench_cuda.cu); this file parses, checks for a GPU and formats.
import { Command, InvalidArgumentError, Option } from 'commander';
import { EnvironmentError } from '../errors.js';
import { addon } from '../transform/addon.js';
import type { ActDtype } from '../transform/marlin.js';
import { gemmBench, type GemmBenchReport, type GemmBenchRow } from '../verify/gemm.js';
import type { Output } from './output.js';

/** The issue's default shapes (N x K): Llama-3-8B / 70B linears and MoE experts. */
export const DEFAULT_SHAPES: [number, number][] = [
  [4096, 4096],
  [14336, 4096],
  [4096, 14336],
  [8192, 8192],
  [28672, 8192],
  [8192, 28672],
  [10240, 8192],
  [1536, 2048],
  [2048, 768],
  [4096, 7168],
  [7168, 2048],
];
export const DEFAULT_MS = [1, 4, 16, 32, 64, 128, 256, 1024];

interface BenchFlags {
  shapes: [number, number][];
  m: number[];
  dtype: ActDtype;
  iters: number;
  json?: boolean;
}

export function parseShapes(v: string): [number, number][] {
  const shapes = v.split(',').map((s) => {
    const m = /^\s*(\d+)\s*[xX]\s*(\d+)\s*$/.exec(s);
    if (!m) throw new InvalidArgumentError(`'${s.trim()}' is not N x K, e.g. 28672x8192`);
    const n = Number(m[1]);
    const k = Number(m[2]);
    if (n < 1 || k < 16 || k % 16 !== 0 || n > 1 << 20 || k > 1 << 20) {
      throw new InvalidArgumentError(`'${s.trim()}': N must be 1..1048576 and K a multiple of 16 up to 1048576`);
    }
    return [n, k] as [number, number];
  });
  return shapes;
}

function parseMs(v: string): number[] {
  const ms = v.split(',').map((s) => Number(s.trim()));
  if (ms.length === 0 || ms.some((m) => !Number.isInteger(m) || m < 1 || m > 65536)) {
    throw new InvalidArgumentError('must be a comma-separated list of whole numbers from 1 to 65536, e.g. 1,16,128');
  }
  return ms;
}

function parseIters(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 3 || n > 10000) throw new InvalidArgumentError('must be a whole number from 3 to 10000');
  return n;
}

/** The derived numbers of one row. */
export function benchFigures(r: GemmBenchRow, copyGBs: number) {
  const flop = 2 * r.m * r.n * r.k;
  const weightGBs = r.weightBytes / (r.oursUs * 1e3);
  return {
    tflops: flop / (r.oursUs * 1e6),
    cublasTflops: r.cublasUs === null ? null : flop / (r.cublasUs * 1e6),
    weightGBs,
    pctCopy: (100 * weightGBs) / copyGBs,
    speedup: r.cublasUs === null ? null : r.cublasUs / r.oursUs,
  };
}

export function benchTable(rep: GemmBenchReport, dtype: ActDtype): string[] {
  const head = ['N x K', 'M', 'ours us', 'cuBLAS us', 'speed-up', 'TFLOP/s', 'weight GB/s', '% of copy', 'plan'];
  const rows = rep.rows.map((r) => {
    const f = benchFigures(r, rep.copyGBs);
    return [
      `${r.n}x${r.k}`,
      String(r.m),
      r.oursUs.toFixed(1),
      r.cublasUs === null ? '-' : r.cublasUs.toFixed(1),
      f.speedup === null ? '-' : `${f.speedup.toFixed(2)}x`,
      f.tflops.toFixed(1),
      f.weightGBs.toFixed(0),
      `${f.pctCopy.toFixed(0)}%`,
      r.plan,
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i === 0 || i === cells.length - 1 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [
    `device        ${rep.device}`,
    `copy          ${rep.copyGBs.toFixed(0)} GB/s (device-to-device, read + write); L2 ${(rep.l2Bytes / 2 ** 20).toFixed(0)} MiB`,
    `reference     ${rep.cublas === 'cublasGemmEx' ? `cuBLAS GemmEx, ${dtype} weights` : `none (${rep.cublas})`}`,
    '',
    fmt(head),
    ...rows.map(fmt),
  ];
}

export function benchCommand(out: Output): Command {
  return new Command('bench')
    .description('Time our Marlin FP4 GEMM against cuBLAS on the GPU (random weights; CUDA events; medians)')
    .addOption(new Option('--shapes <list>', 'N x K shapes, comma-separated, e.g. 28672x8192,8192x28672').argParser(parseShapes).default(DEFAULT_SHAPES, 'Llama-3 8B/70B linears and MoE experts'))
    .addOption(new Option('--m <list>', 'row counts of X, comma-separated').argParser(parseMs).default(DEFAULT_MS, DEFAULT_MS.join(',')))
    .addOption(new Option('--dtype <dtype>', 'activation dtype').choices(['bfloat16', 'float16']).default('bfloat16'))
    .addOption(new Option('--iters <n>', 'timed calls per point (after warm-up)').argParser(parseIters).default(40))
    .option('--json', 'print one JSON document')
    .action(async (flags: BenchFlags) => {
      const st = addon().cudaStatus();
      if (!st.available) throw new EnvironmentError(`bench needs a CUDA GPU: ${st.reason ?? 'none found'}`);
      let rep: GemmBenchReport;
      try {
        rep = await gemmBench({ shapes: flags.shapes, ms: flags.m, dtype: flags.dtype, iters: flags.iters });
      } catch (e) {
        const msg = (e as Error).message;
        if (/^CUDA (unavailable|error|out of memory)/.test(msg)) throw new EnvironmentError(`bench: ${msg}`);
        throw e;
      }
      if (flags.json) {
        out.json({
          device: rep.device,
          dtype: flags.dtype,
          copy_gbs: rep.copyGBs,
          l2_bytes: rep.l2Bytes,
          reference: rep.cublas,
          rows: rep.rows.map((r) => {
            const f = benchFigures(r, rep.copyGBs);
            return {
              n: r.n,
              k: r.k,
              m: r.m,
              ours_us: r.oursUs,
              cublas_us: r.cublasUs,
              speedup: f.speedup,
              tflops: f.tflops,
              weight_bytes: r.weightBytes,
              weight_gbs: f.weightGBs,
              pct_copy: f.pctCopy,
              dequant_us: r.dequantUs,
              plan: r.plan,
            };
          }),
        });
        return;
      }
      for (const l of benchTable(rep, flags.dtype)) out.line(l);
    });
}
