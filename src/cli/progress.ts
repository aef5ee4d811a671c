// One self-updating progress line on stderr, only on a TTY and never with --quiet or --json,
// so CI logs stay clean.
import { bytes, seconds } from './format.js';

export class ProgressLine {
  private last = 0;
  private readonly start = performance.now();
  private shown = false;

  constructor(
    private readonly label: string,
    private readonly enabled: boolean,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {}

  /** Progress in bytes: percentage, rate and ETA. */
  update(done: number, total: number, detail = ''): void {
    this.show(done, total, (pct, rate, eta) => `${pct}  ${bytes(done)} / ${bytes(total)}  ${bytes(rate)}/s  ETA ${seconds(eta)}  ${detail}`);
  }

  /** Progress in items (e.g. layers): `done` of `total` finished, `detail` is the current one. */
  count(done: number, total: number, detail = ''): void {
    this.show(done, total, (pct, _rate, eta) => `${pct}  ${done + 1}/${total}  ETA ${seconds(eta)}  ${detail}`);
  }

  private show(done: number, total: number, text: (pct: string, rate: number, eta: number) => string): void {
    if (!this.enabled) return;
    const now = performance.now();
    if (now - this.last < 100 && done < total) return;
    this.last = now;
    const elapsed = (now - this.start) / 1000;
    const rate = elapsed > 0 ? done / elapsed : 0;
    const eta = rate > 0 ? (total - done) / rate : 0;
    const pct = total > 0 ? Math.floor((100 * done) / total) : 100;
    let line = `${this.label} ${text(`${String(pct).padStart(3)}%`, rate, eta)}`;
    const width = this.stream.columns ?? 100;
    if (line.length > width - 1) line = `${line.slice(0, width - 2)}…`;
    this.stream.write(`\r\x1b[2K${line}`);
    this.shown = true;
  }

  clear(): void {
    if (this.shown) this.stream.write('\r\x1b[2K');
    this.shown = false;
  }
}
