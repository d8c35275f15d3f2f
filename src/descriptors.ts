// How many more file descriptors this process may open, and the client connections that allows.

/** Descriptors kept for all but client connections: cache files, upstream sockets, the runtime. */
const RESERVED = 64;
/**
 * Default cap where descriptors are plentiful (nginx allows 512 to 1024 per worker by default). It
 * bounds the start-up probe too: 2 x 1024 + 64 opens, about 30 ms.
 */
export const DEFAULT_CAP = 1024;
/** Fewest connections the derived default allows. */
const FLOOR = 16;

/**
 * Counts the descriptors this process can still open, by opening `/dev/null` until the limit
 * (EMFILE or ENFILE) or `upTo`, then closing them all. Deno hides `/proc/self/limits` and has no
 * getrlimit without --allow-all, --allow-run or --allow-ffi; this needs only --allow-read.
 * Returns undefined when `upTo` were opened (no limit below that) or opening failed otherwise.
 */
export function probeFreeDescriptors(
  upTo: number,
  open: () => Disposable = () => Deno.openSync("/dev/null"),
): number | undefined {
  const opened: Disposable[] = [];
  try {
    while (opened.length < upTo) opened.push(open());
    return undefined;
  } catch (e) {
    return /os error 2[34]\b/.test(String((e as Error)?.message)) ? opened.length : undefined;
  } finally {
    for (const file of opened) file[Symbol.dispose]();
  }
}

/**
 * Connections allowed when `limits.maxConnections` is not set: half of the free descriptors left
 * after a reserve (a connection serving a blob also holds its file or an upstream socket), at most
 * DEFAULT_CAP. With systemd's default soft limit of 1024, about 460.
 */
export function defaultMaxConnections(free: number | undefined): number {
  if (free === undefined) return DEFAULT_CAP;
  return Math.max(FLOOR, Math.min(DEFAULT_CAP, Math.floor((free - RESERVED) / 2)));
}

/** The default connection cap for this process: probes only as far as the cap needs to know. */
export function maxConnectionsForThisProcess(): { max: number; free?: number } {
  const free = probeFreeDescriptors(2 * DEFAULT_CAP + RESERVED);
  return { max: defaultMaxConnections(free), free };
}
