// Parses the human durations used in the config ("500ms", "30s", "5m", "2h", "1d").

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Milliseconds for a duration such as "30s"; undefined when the text is not one. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text.trim());
  return m ? Number(m[1]) * UNIT_MS[m[2]] : undefined;
}
