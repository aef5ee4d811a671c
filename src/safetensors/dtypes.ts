import type { Dtype as HubDtype } from '@huggingface/hub';

// Type-only import: the hub package is large and network-oriented, and we only want its
// dtype vocabulary so our names can never drift from what the Hub calls them. `Extract`
// keeps our subset; if a name ever disappeared from hub's union, the DTYPE_SIZE literal
// below would stop type-checking (excess property), so the drift is caught at build time.
export type Dtype = Extract<
  HubDtype,
  | 'BF16'
  | 'F16'
  | 'F32'
  | 'F64'
  | 'F8_E4M3'
  | 'F8_E5M2'
  | 'F8_E8M0'
  | 'U8'
  | 'I8'
  | 'U16'
  | 'I16'
  | 'U32'
  | 'I32'
  | 'U64'
  | 'I64'
  | 'BOOL'
>;

// Only whole-byte dtypes are listed: sub-byte formats (F4, F6_*) can't satisfy
// "byte length == elements × itemsize", and NVFP4 checkpoints store packed FP4 as U8 anyway.
// Frozen because every size check in the module trusts this table.
export const DTYPE_SIZE: Record<Dtype, number> = Object.freeze({
  BF16: 2,
  F16: 2,
  F32: 4,
  F64: 8,
  F8_E4M3: 1,
  F8_E5M2: 1,
  F8_E8M0: 1,
  U8: 1,
  I8: 1,
  U16: 2,
  I16: 2,
  U32: 4,
  I32: 4,
  U64: 8,
  I64: 8,
  BOOL: 1,
});

export function isDtype(s: string): s is Dtype {
  // hasOwn, not `in`: dtype strings come from untrusted headers, and "toString" or
  // "__proto__" must not pass just because they live on Object.prototype.
  return Object.hasOwn(DTYPE_SIZE, s);
}
