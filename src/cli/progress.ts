// What a long command shows as it works: live per-transfer lines on a terminal, lines otherwise.

import { formatBytes, formatRate } from "./format.ts";

/** One download in progress. */
export interface Transfer {
  /** What it belongs to, e.g. the platform (`linux/arm64`). */
  label: string;
  digest: string;
  /** Expected size in bytes, when known. */
  size?: number;
  received: number;
  /** When it started, in ms (the progress clock). */
  started: number;
}

/** Where a command's output goes while it works. */
export interface Progress {
  /** A line that stays. */
  line(text: string): void;
  /** A transfer begins. */
  start(transfer: Transfer): void;
  /** A transfer received bytes (redrawn at most every `REDRAW_MS`). */
  update(transfer: Transfer): void;
  /** A transfer ended: its live line is replaced by `text` on a terminal (nothing otherwise). */
  finish(transfer: Transfer, text?: string): void;
  /** The clock transfers are timed with, in ms. */
  now(): number;
}

/** How often live lines are redrawn at most. */
const REDRAW_MS = 100;

/** For pipes and logs: only the lines that stay; transfers show nothing. */
export function lineProgress(print: (line: string) => void, now = Date.now): Progress {
  return { line: print, start() {}, update() {}, finish() {}, now };
}

/** Options of `terminalProgress`. */
export interface TerminalOptions {
  /** Clock in ms (default `performance.now`). */
  now?: () => number;
  /** Terminal width; lines are cut to it so that redrawing stays aligned (default: asked). */
  columns?: number;
}

/**
 * For a terminal: lines that stay are written above a block of live lines, one per transfer
 * (bytes received of the size, percentage, rate), redrawn in place with ANSI cursor moves.
 */
export function terminalProgress(
  write: (text: string) => void,
  options: TerminalOptions = {},
): Progress {
  const now = options.now ?? (() => performance.now());
  const columns = options.columns ?? consoleColumns();
  const active: Transfer[] = [];
  let drawn = 0;
  let lastDraw = -Infinity;
  const fit = (text: string) => text.length > columns - 1 ? text.slice(0, columns - 1) : text;
  /** Moves up over the live block and writes `lines` then the live lines again. */
  const redraw = (lines: string[] = []) => {
    let out = drawn ? `\x1b[${drawn}A` : "";
    for (const text of lines) out += `\r\x1b[2K${text}\n`;
    const live = active.map((t) => fit(liveLine(t, now())));
    for (const text of live) out += `\r\x1b[2K${text}\n`;
    out += "\x1b[J";
    drawn = live.length;
    lastDraw = now();
    write(out);
  };
  return {
    line: (text) => redraw([text]),
    start(transfer) {
      active.push(transfer);
      redraw();
    },
    update() {
      if (now() - lastDraw >= REDRAW_MS) redraw();
    },
    finish(transfer, text) {
      const i = active.indexOf(transfer);
      if (i >= 0) active.splice(i, 1);
      redraw(text === undefined ? [] : [text]);
    },
    now,
  };
}

/** `  linux/amd64 sha256:0123456789ab  1.5 MiB / 3.0 MiB  50%  750.0 KiB/s` */
export function liveLine(t: Transfer, now: number): string {
  const got = formatBytes(t.received);
  const of = t.size ? ` / ${formatBytes(t.size)}  ${Math.floor((t.received / t.size) * 100)}%` : "";
  return `  ${t.label} ${t.digest.slice(0, 19)}  ${got}${of}  ${
    formatRate(t.received, now - t.started)
  }`;
}

function consoleColumns(): number {
  try {
    return Deno.consoleSize().columns;
  } catch {
    return 80;
  }
}
