export { type Dtype, DTYPE_SIZE, isDtype } from './dtypes.js';
export { SafetensorsError } from './errors.js';
export { type TensorEntry, type SafetensorsHeader, MAX_HEADER_BYTES, parseHeader, readHeader } from './header.js';
export { SafetensorsReader } from './reader.js';
export { type RandomAccessFile } from './io.js';
export { type PlannedTensor, encodeHeader, SafetensorsWriter } from './writer.js';
