// Section 1's bytes of one source linear, whatever its storage: U8 [N, K/2] packed codes and
// F8_E4M3 [N, K/16] block scales. A 2-D tensor of its own is read as it is; a linear inside a
// 3-D expert tensor is its expert's slab and its rows of N, byte-transposed when the tensor
// is stored K-major (the nibble pairs run along K either way, so a transpose of bytes is a
// transpose of the codes). Convert, the scale pass and verify all read sources through here.
import { readTensor, readTensorInto, type Checkpoint } from '../checkpoint/model-dir.js';
import { readLinearTensor, type LinearSource } from './linears.js';

export type SourcePart = 'weight' | 'scale';

/** Bytes per row of N: K/2 packed codes, or K/16 block scales. */
function rowBytes(lin: LinearSource, part: SourcePart): number {
  return part === 'weight' ? lin.k / 2 : lin.k / 16;
}

/** Size of the section-1 bytes of one linear's weight or scales. */
export function sourceBytes(lin: LinearSource, part: SourcePart): number {
  return lin.n * rowBytes(lin, part);
}

/** Blocked transpose: out[r, j] = src[j, col0 + r] for r < rows, j < cols; src rows are `stride` wide. */
export function transposeColumns(src: Uint8Array, stride: number, col0: number, rows: number, cols: number, out: Uint8Array): void {
  const B = 64;
  for (let j0 = 0; j0 < cols; j0 += B) {
    const j1 = Math.min(cols, j0 + B);
    for (let r0 = 0; r0 < rows; r0 += B) {
      const r1 = Math.min(rows, r0 + B);
      for (let j = j0; j < j1; j++) {
        const s = j * stride + col0;
        for (let r = r0; r < r1; r++) out[r * cols + j] = src[s + r]!;
      }
    }
  }
}

/** Fills `target` (at least sourceBytes long) with one linear's weight or scales in section 1's layout. */
export async function readSourceInto(ckpt: Checkpoint, lin: LinearSource, part: SourcePart, target: Uint8Array): Promise<Uint8Array> {
  const name = part === 'weight' ? lin.weight : lin.scale;
  const rb = rowBytes(lin, part);
  const size = lin.n * rb;
  const out = target.subarray(0, size);
  const v = lin.view;
  if (!v) return readTensorInto(ckpt, name, 0, out);
  const slab = v.rowsTotal * rb;
  const base = v.expert * slab;
  if (!v.kMajor) return readTensorInto(ckpt, name, base + v.row0 * rb, out);
  // K-major: the expert's slab is [rb, rowsTotal]; this linear is columns row0..row0+n.
  const stored = Buffer.allocUnsafe(rb * v.rowsTotal);
  await readTensorInto(ckpt, name, base, stored);
  transposeColumns(stored, v.rowsTotal, v.row0, lin.n, rb, out);
  return out;
}

/** One linear's weight or scales in section 1's layout, in a new buffer. */
export async function readSource(ckpt: Checkpoint, lin: LinearSource, part: SourcePart): Promise<Buffer> {
  // gpt-oss MXFP4 experts: a contiguous slice of a shared tensor (LinearSource.slice).
  if (lin.slice) return readLinearTensor(ckpt, lin, part === 'weight' ? 'weight' : 'scale');
  if (!lin.view) return readTensor(ckpt, part === 'weight' ? lin.weight : lin.scale);
  const b = Buffer.alloc(sourceBytes(lin, part));
  await readSourceInto(ckpt, lin, part, b);
  return b;
}
