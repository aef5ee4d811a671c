// Buffers reused across tensors: fresh memory costs page faults that are slower than reading
// from the page cache or repacking, and a page-locked buffer costs its pinning too (about
// 6 ms per 16 MiB on the H200 host, on the main thread). take(size) hands out an exact-size
// view of a pooled buffer that is at least that large; at most `keep` idle buffers (and
// `keepBytes` of them) are kept, so memory stays bounded by the tensors in flight. `keep` must
// cover what is in flight at once: with 6 idle buffers for 4 GPU shards in flight (each
// with a batch read ahead, one transformed and two being written and hashed), the 128-expert
// MoE allocated and pinned 1.2 GB of buffers over its run, dropping most again, for a working
// set of about 0.4 GB.
import { addon } from '../transform/addon.js';
import { noteAllocation } from './profile.js';

/** Buffers at least this large are page-locked when the pool feeds the GPU. */
const PIN_MIN = 1 << 20;
/** Capacities above this are rounded up to a multiple of it, so that batches of slightly different sizes share buffers. */
const LARGE_STEP = 4 << 20;

export class BufferPool {
  private readonly idle: Buffer[] = [];
  private idleBytes = 0;

  /**
   * pinned: the buffers feed GPU calls. Those of PIN_MIN bytes or more then get memory pages
   * of their own, page-locked once (gpuPinHost) and unlocked when the pool drops them, so
   * that the copies to and from the device are asynchronous DMA at full link speed; they are
   * the long-lived, reused buffers for which pinning pays off.
   */
  constructor(
    private readonly keep = 6,
    private readonly pinned = false,
    private readonly keepBytes = Infinity,
  ) {}

  take(size: number): Buffer {
    let best = -1;
    for (let i = 0; i < this.idle.length; i++) {
      const b = this.idle[i]!;
      if (b.length >= size && (best < 0 || b.length < this.idle[best]!.length)) best = i;
    }
    if (best >= 0) {
      const b = this.idle.splice(best, 1)[0]!;
      this.idleBytes -= b.length;
      return b.subarray(0, size);
    }
    // Round up so that slightly different sizes share a buffer.
    const step = size <= LARGE_STEP ? 1 << 20 : LARGE_STEP;
    const capacity = size <= 1 << 20 ? size : Math.ceil(size / step) * step;
    noteAllocation(capacity);
    if (this.pinned && capacity >= PIN_MIN) {
      const b = addon().gpuHostBuffer(capacity);
      addon().gpuPinHost(b);
      return b.subarray(0, size);
    }
    return Buffer.allocUnsafeSlow(capacity).subarray(0, size);
  }

  give(view: Buffer): void {
    const whole = Buffer.from(view.buffer, 0, view.buffer.byteLength);
    this.idle.push(whole);
    this.idleBytes += whole.length;
    if (this.idle.length > this.keep || this.idleBytes > this.keepBytes) {
      // Drop the smallest: the large ones are the expensive ones to fault in (and pin) again.
      this.idle.sort((a, b) => b.length - a.length);
      while (this.idle.length > this.keep || (this.idleBytes > this.keepBytes && this.idle.length > 1)) {
        const dropped = this.idle.pop()!;
        this.idleBytes -= dropped.length;
        if (this.pinned) addon().gpuUnpinHost(dropped);
      }
    }
  }
}
