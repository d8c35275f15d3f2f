// Human-readable numbers for the command-line output.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** `1536` -> `1.5 KiB`. */
export function formatBytes(n: number): string {
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${UNITS[i]}`;
}

/** `bytes` over `ms` milliseconds as a rate: `1.5 MiB/s` (`-` before any time has passed). */
export function formatRate(bytes: number, ms: number): string {
  if (ms <= 0) return "- B/s";
  return `${formatBytes(Math.round((bytes * 1000) / ms))}/s`;
}

/** `1234` ms -> `1.2 s`; under a second, `340 ms`. */
export function formatDuration(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}
