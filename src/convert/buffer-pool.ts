// Buffers reused across tensors: fresh memory costs page faults that are slower than reading
// from the page cache or repacking. take(size) hands out an exact-size view of a pooled buffer
// that is at least that large; at most `keep` idle buffers are kept, so memory stays bounded
// by the few largest tensors in flight.
import { addon } from '../transform/addon.js';
import { noteAllocation } from './profile.js';

/** Buffers at least this large are page-locked when the pool feeds the GPU. */
const PIN_MIN = 1 << 20;

export class BufferPool {
  private readonly idle: Buffer[] = [];

  /**
   * pinned: the buffers feed GPU calls. Those of PIN_MIN bytes or more then get memory pages
   * of their own, page-locked once (gpuPinHost) and unlocked when the pool drops them, so
   * that the copies to and from the device are asynchronous DMA at full link speed; they are
   * the long-lived, reused buffers for which pinning pays off.
   */
  constructor(
    private readonly keep = 6,
    private readonly pinned = false,
  ) {}

  take(size: number): Buffer {
    let best = -1;
    for (let i = 0; i < this.idle.length; i++) {
      const b = this.idle[i]!;
      if (b.length >= size && (best < 0 || b.length < this.idle[best]!.length)) best = i;
    }
    if (best >= 0) return this.idle.splice(best, 1)[0]!.subarray(0, size);
    // Round up so that slightly different sizes share a buffer.
    const capacity = size <= 1 << 20 ? size : Math.ceil(size / (1 << 20)) * (1 << 20);
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
    if (this.idle.length > this.keep) {
      // Drop the smallest: the large ones are the expensive ones to fault in (and pin) again.
      this.idle.sort((a, b) => b.length - a.length);
      for (const dropped of this.idle.splice(this.keep)) if (this.pinned) addon().gpuUnpinHost(dropped);
    }
  }
}
