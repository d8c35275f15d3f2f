// Our small Range helper: one byte range (`bytes=N-M`, `bytes=N-`, `bytes=-N`) against a size.

/** A satisfiable range: [start, end) of a blob of `size` bytes. */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * The range a Range header asks for: undefined for no header or one we do not serve as a range
 * (several ranges, other units: the whole blob is sent), "unsatisfiable" past the end.
 */
export function parseRange(
  header: string | null,
  size: number,
): ByteRange | "unsatisfiable" | undefined {
  const m = /^bytes=(\d*)-(\d*)$/.exec((header ?? "").replace(/\s/g, ""));
  if (!m || (m[1] === "" && m[2] === "")) return undefined;
  if (m[1] === "") {
    const suffix = Number(m[2]);
    if (suffix === 0) return "unsatisfiable";
    return { start: Math.max(0, size - suffix), end: size };
  }
  const start = Number(m[1]);
  const end = m[2] === "" ? size : Math.min(size, Number(m[2]) + 1);
  if (start >= size || end <= start) return "unsatisfiable";
  return { start, end };
}
