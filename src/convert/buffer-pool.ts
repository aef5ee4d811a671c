// Buffers reused across tensors: fresh memory costs page faults that are slower than reading
// from the page cache or repacking. take(size) hands out an exact-size view of a pooled buffer
// that is at least that large; at most `keep` idle buffers are kept, so memory stays bounded
// by the few largest tensors in flight.
export class BufferPool {
  private readonly idle: Buffer[] = [];

  constructor(private readonly keep = 6) {}

  take(size: number): Buffer {
    let best = -1;
    for (let i = 0; i < this.idle.length; i++) {
      const b = this.idle[i]!;
      if (b.length >= size && (best < 0 || b.length < this.idle[best]!.length)) best = i;
    }
    if (best >= 0) return this.idle.splice(best, 1)[0]!.subarray(0, size);
    // Round up so that slightly different sizes share a buffer.
    const capacity = size <= 1 << 20 ? size : Math.ceil(size / (1 << 20)) * (1 << 20);
    return Buffer.allocUnsafeSlow(capacity).subarray(0, size);
  }

  give(view: Buffer): void {
    const whole = Buffer.from(view.buffer, 0, view.buffer.byteLength);
    this.idle.push(whole);
    if (this.idle.length > this.keep) {
      // Drop the smallest: the large ones are the expensive ones to fault in again.
      this.idle.sort((a, b) => b.length - a.length);
      this.idle.length = this.keep;
    }
  }
}
