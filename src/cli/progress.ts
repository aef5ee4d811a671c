// Progress on stderr, never with --quiet or --json (nor with HF_HUB_DISABLE_PROGRESS_BARS=1):
// on a terminal one self-updating line; without one (CI logs) a plain line every few seconds,
// so that a long job is not silent for minutes and the log does not fill with redraws.
import { bytes, seconds } from './format.js';

/** 'tty': a self-updating line; 'lines': a plain line every interval; 'off': nothing. */
export type ProgressMode = 'tty' | 'lines' | 'off';

/** Seconds between plain progress lines without a terminal (MARLIN_FP4_PROGRESS_SECONDS; 0 = none). */
export function progressInterval(env: NodeJS.ProcessEnv = process.env): number {
  const v = Number(env.MARLIN_FP4_PROGRESS_SECONDS ?? 10);
  return Number.isFinite(v) && v >= 0 ? v : 10;
}

export class ProgressLine {
  private last = 0;
  private readonly start = performance.now();
  private shown = false;
  private readonly intervalMs: number;

  constructor(
    private readonly label: string,
    private readonly mode: ProgressMode | boolean,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {
    this.intervalMs = this.mode === 'lines' ? progressInterval() * 1000 : 100;
    // The first plain line comes one interval in: short runs print none.
    if (this.mode === 'lines') this.last = this.start;
  }

  /** Progress in bytes: percentage, rate and ETA. */
  update(done: number, total: number, detail = ''): void {
    this.show(done, total, (pct, rate, eta) => `${pct}  ${bytes(done)} / ${bytes(total)}  ${bytes(rate)}/s  ETA ${seconds(eta)}  ${detail}`);
  }

  /** Progress in items (e.g. layers): `done` of `total` finished, `detail` is the current one. */
  count(done: number, total: number, detail = ''): void {
    this.show(done, total, (pct, _rate, eta) => `${pct}  ${done + 1}/${total}  ETA ${seconds(eta)}  ${detail}`);
  }

  private show(done: number, total: number, text: (pct: string, rate: number, eta: number) => string): void {
    const tty = this.mode === 'tty' || this.mode === true;
    if (!tty && this.mode !== 'lines') return;
    if (this.mode === 'lines' && this.intervalMs === 0) return;
    const now = performance.now();
    if (now - this.last < this.intervalMs && (done < total || !tty)) return;
    this.last = now;
    const elapsed = (now - this.start) / 1000;
    const rate = elapsed > 0 ? done / elapsed : 0;
    const eta = rate > 0 ? (total - done) / rate : 0;
    const pct = total > 0 ? Math.floor((100 * done) / total) : 100;
    let line = `${this.label} ${text(`${String(pct).padStart(3)}%`, rate, eta)}`;
    if (!tty) {
      this.stream.write(`${line.replace(/\s+/g, ' ').trim()} (${seconds(elapsed)})\n`);
      return;
    }
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
