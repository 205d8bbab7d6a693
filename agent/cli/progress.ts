import { formatBytes } from './format.js';

/**
 * A one-line progress bar on stderr with bytes, rate and ETA, drawn only on a terminal and at most
 * five times a second. Off the terminal (scripts, CI, --json) it prints nothing.
 */
export class ProgressBar {
  private readonly enabled: boolean;
  private readonly started = performance.now();
  private last = 0;
  private drawn = false;

  constructor(
    private readonly label: string,
    enabled = process.stderr.isTTY === true,
  ) {
    this.enabled = enabled;
  }

  update(done: number, total: number, extra = ''): void {
    if (!this.enabled) return;
    const now = performance.now();
    if (now - this.last < 200 && done < total) return;
    this.last = now;
    const elapsed = (now - this.started) / 1000;
    const rate = elapsed > 0 ? done / elapsed : 0;
    const frac = total > 0 ? Math.min(1, done / total) : 1;
    const width = 24;
    const fill = Math.round(frac * width);
    const eta = rate > 0 ? Math.max(0, (total - done) / rate) : 0;
    const etaText = `${Math.floor(eta / 60)}:${String(Math.round(eta % 60)).padStart(2, '0')}`;
    const line =
      `${this.label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ` +
      `${formatBytes(done)}/${formatBytes(total)} ${formatBytes(rate)}/s ETA ${etaText}${extra ? ' ' + extra : ''}`;
    process.stderr.write(`\r\x1b[K${line}`);
    this.drawn = true;
  }

  done(): void {
    if (this.enabled && this.drawn) process.stderr.write('\r\x1b[K');
  }
}
