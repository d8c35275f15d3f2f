// Structured JSON Lines logging (LogTape) to stderr, and the per-request record each handler fills.

import {
  configureSync,
  getConsoleSink,
  getLogger,
  isLogLevel,
  jsonLinesFormatter,
  type Logger,
  type LogLevel,
} from "@logtape/logtape";

/** The application logger; child categories name the part that logs. */
export const log: Logger = getLogger(["registry-mirror"]);

/** What one request did, filled in as it is served and logged as one line when it completes. */
export interface RequestRecord {
  method: string;
  path: string;
  /** The authenticated client (user name, or "token"), when client auth is on. */
  user?: string;
  registry?: string;
  repository?: string;
  reference?: string;
  status?: number;
  /** Body bytes sent: counted for blobs followed during a fill, else the Content-Length. */
  bytes?: number;
  upstreamStatus?: number;
  /** X-Cache: HIT, MISS or STALE. */
  cache?: string;
  /** Body bytes read from upstream. */
  upstreamBytes: number;
  /** Upstream retries made. */
  retries: number;
  error?: string;
}

/** Replaces the query of every URL in `text` (signed CDN URLs carry credentials there). */
export function redactUrls(text: string): string {
  return text.replace(/(https?:\/\/[^\s?#)"'<>]+)\?[^\s#)"'<>]*/g, "$1?REDACTED");
}

/** Sets up logging at `level` (from `MIRROR_LOG_LEVEL`, default info). Throws on an unknown level. */
export function setupLogging(level = "info"): void {
  const lowestLevel = level === "warn" ? "warning" : level;
  if (!isLogLevel(lowestLevel)) {
    throw new Error(
      `MIRROR_LOG_LEVEL: unknown level "${level}" (trace, debug, info, warning, error, fatal)`,
    );
  }
  const toStderr = Object.fromEntries(
    ["trace", "debug", "info", "warning", "error", "fatal"].map((l) => [l, "error"]),
  ) as Record<LogLevel, "error">;
  configureSync({
    reset: true,
    sinks: { stderr: getConsoleSink({ formatter: jsonLinesFormatter, levelMap: toStderr }) },
    loggers: [
      { category: ["registry-mirror"], lowestLevel: lowestLevel as LogLevel, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}
