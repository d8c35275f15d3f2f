// Logging (LogTape) to stderr: coloured text lines for people at a terminal, JSON Lines for
// machines; and the per-request record each handler fills.

import {
  configureSync,
  getAnsiColorFormatter,
  getLogger,
  getTextFormatter,
  isLogLevel,
  jsonLinesFormatter,
  type Logger,
  type LogLevel,
  type LogRecord,
  sanitizeControlSequences,
  type TextFormatter,
  type TextFormatterOptions,
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
  /** The upstream (`host[:port]`, the primary or a fallback) that answered last. */
  via?: string;
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

/** How log lines are written: JSON Lines for machines, text lines for people. */
export type LogFormat = "json" | "text";

/** How `setupLogging` writes; each option has a default read from the process. */
export interface LoggingOptions {
  /** `json` or `text` (default: env `MIRROR_LOG_FORMAT`, else text on a terminal, else json). */
  format?: string;
  /** Whether stderr is a terminal (default: `Deno.stderr.isTerminal()`). */
  terminal?: boolean;
  /** Colours in text lines (default: on a terminal unless env `NO_COLOR` is set). */
  color?: boolean;
  /** Where each formatted line goes (default: stderr, in a {@linkcode LineBatch}). */
  write?: (line: string) => void;
}

/** Sets up logging at `level` (from `MIRROR_LOG_LEVEL`, default info). Throws on an unknown level. */
export function setupLogging(level = "info", options: LoggingOptions = {}): void {
  const lowestLevel = level === "warn" ? "warning" : level;
  if (!isLogLevel(lowestLevel)) {
    throw new Error(
      `MIRROR_LOG_LEVEL: unknown level "${level}" (trace, debug, info, warning, error, fatal)`,
    );
  }
  const terminal = options.terminal ?? Deno.stderr.isTerminal();
  const format = logFormat(options.format ?? Deno.env.get("MIRROR_LOG_FORMAT"), terminal);
  const color = options.color ?? (terminal && !Deno.env.get("NO_COLOR"));
  const formatter = format === "json" ? jsonFormatter : textFormatter({ color });
  const write = options.write ?? stderrLines;
  const sink = (record: LogRecord) => write(formatter(record));
  configureSync({
    reset: true,
    sinks: { stderr: sink },
    loggers: [
      { category: ["registry-mirror"], lowestLevel: lowestLevel as LogLevel, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}

/**
 * Log lines written together, in order and never dropped: the lines logged in one task of the
 * event loop (a burst of requests completing together) go out in one write, at the end of that
 * task, so a line is on stderr as soon as it was before. A write per line (console.error) was half
 * of the logging's cost, which was 29% of a cached manifest's CPU (BENCHMARKS.md). What is queued
 * is also written when the process exits or meets an uncaught error.
 */
export class LineBatch {
  #pending = "";

  constructor(private readonly write: (text: string) => void) {}

  add(line: string): void {
    if (this.#pending === "") queueMicrotask(() => this.flush());
    this.#pending += line;
  }

  flush(): void {
    const text = this.#pending;
    this.#pending = "";
    if (text !== "") this.write(text);
  }
}

const encoder = new TextEncoder();

/** Writes all of `text` to stderr; a failing stderr loses the lines, never the process. */
function writeStderr(text: string): void {
  let bytes = encoder.encode(text);
  try {
    while (bytes.length > 0) bytes = bytes.subarray(Deno.stderr.writeSync(bytes));
  } catch { /* stderr closed: nowhere to say so */ }
}

const stderrBatch = new LineBatch(writeStderr);
/** Where log lines go by default: stderr, in batches. */
const stderrLines = (line: string) => stderrBatch.add(line);
for (const event of ["unload", "error", "unhandledrejection"]) {
  globalThis.addEventListener(event, () => stderrBatch.flush());
}

/** The format asked for (`MIRROR_LOG_FORMAT`), else text on a terminal and JSON otherwise. */
export function logFormat(asked: string | undefined, terminal: boolean): LogFormat {
  if (asked === undefined || asked === "") return terminal ? "text" : "json";
  if (asked === "json" || asked === "text") return asked;
  throw new Error(`MIRROR_LOG_FORMAT: unknown format "${asked}" (json, text)`);
}

/**
 * A message with its values as they are: `listening on 127.0.0.1:8080`, not LogTape's
 * `listening on "127.0.0.1":8080`. Lists are joined with ", ", other objects are JSON.
 */
export function renderMessage(message: readonly unknown[]): string {
  let text = "";
  for (let i = 0; i < message.length; i++) {
    text += i % 2 === 0 ? message[i] : renderValue(message[i]);
  }
  return text;
}

function renderValue(value: unknown): string {
  if (typeof value === "string") return value;
  if (value instanceof Error) return value.message;
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return value.map(renderValue).join(", ");
  if (value !== null && typeof value === "object") {
    try {
      return JSON.stringify(value);
    } catch {
      return String(value);
    }
  }
  return String(value);
}

/** A record whose message is already rendered, so no formatter quotes its values. */
function rendered(record: LogRecord): LogRecord {
  return { ...record, message: [renderMessage(record.message)] };
}

/**
 * One JSON object per line, LogTape's fields (`@timestamp`, `level`, `message`, `logger`,
 * `properties`), with the message rendered without quotes.
 */
export function jsonFormatter(record: LogRecord): string {
  return jsonLinesFormatter(rendered(record));
}

/**
 * `2026-01-02 10:00:00.000 INF GET /v2/ 200 bytes=2 durationMs=1`: time, level, message, then the
 * properties the message does not show, coloured when `color` is set.
 */
export function textFormatter(options: { color: boolean }): TextFormatter {
  const dim = (text: string) => options.color ? `\x1b[2m${text}\x1b[0m` : text;
  const settings: TextFormatterOptions = {
    timestamp: "date-time",
    level: "ABBR",
    format: ({ timestamp, level, message, record }) => {
      const rest = details(record);
      return `${timestamp} ${level} ${message}${rest ? ` ${dim(rest)}` : ""}`;
    },
  };
  const inner = options.color ? getAnsiColorFormatter(settings) : getTextFormatter(settings);
  return (record) => inner(rendered(record));
}

/** `key=value` for each property the message template does not name; absent values are left out. */
function details(record: LogRecord): string {
  const template = typeof record.rawMessage === "string"
    ? record.rawMessage
    : record.rawMessage.join("");
  const shown = new Set(
    [...template.matchAll(/\{([^{}.[\]]+)[^{}]*\}/g)].map((m) => m[1].trim()),
  );
  const pairs: string[] = [];
  for (const [key, value] of Object.entries(record.properties)) {
    if (shown.has(key) || value === undefined || value === null || value === "") continue;
    const text = renderValue(value);
    pairs.push(`${key}=${/[\s"=]/.test(text) ? JSON.stringify(text) : text}`);
  }
  return sanitizeControlSequences(pairs.join(" "), { newlines: "escape" });
}
