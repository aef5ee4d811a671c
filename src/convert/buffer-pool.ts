// Output buffers reused across tensors of equal size: fresh memory costs page faults that
// are slower than the repack itself. A few sizes are kept, so memory stays bounded.
export class BufferPool {
  private readonly free = new Map<number, Buffer>();

  constructor(private readonly keep = 4) {}

  take(size: number): Buffer {
    const b = this.free.get(size);
    if (b) {
      this.free.delete(size);
      return b;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  give(b: Buffer): void {
    this.free.delete(b.length);
    this.free.set(b.length, b);
    while (this.free.size > this.keep) this.free.delete(this.free.keys().next().value!);
  }
}
