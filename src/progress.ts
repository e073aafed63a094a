// A one-line progress display for people at a terminal (the scan's 5–20 s are otherwise
// silent). Only on a TTY: in JSON or piped mode nothing extra is written.
import type { WriteStream } from 'node:tty';

export interface ProgressLine {
  update(text: string): void;
  /** Removes the line (before the command's own output or the next log line). */
  clear(): void;
}

/** A progress line on `stream` when it is a terminal; undefined otherwise. */
export function progressLine(stream: NodeJS.WriteStream & Partial<WriteStream> = process.stderr): ProgressLine | undefined {
  if (stream.isTTY !== true) return undefined;
  let last = 0;
  let shown = false;
  return {
    update(text) {
      const now = performance.now();
      // A redraw per count query would flicker; ten a second read as live.
      if (now - last < 100) return;
      last = now;
      const width = Math.max(20, (stream.columns || 120) - 1);
      stream.write(`\r\x1b[2K${text.slice(0, width)}`);
      shown = true;
    },
    clear() {
      if (shown) stream.write('\r\x1b[2K');
      shown = false;
    },
  };
}
