import { deepEqual, equal, match, throws } from "node:assert/strict";
import { LineBatch, log, logFormat, redactUrls, renderMessage, setupLogging } from "./log.ts";

Deno.test("redactUrls: signed URL queries never reach a log line or an error message", () => {
  equal(
    redactUrls(
      "error sending request for url (https://cdn.example.com/blob/data?X-Amz-Signature=abc&X-Amz-Credential=k): connect",
    ),
    "error sending request for url (https://cdn.example.com/blob/data?REDACTED): connect",
  );
  equal(
    redactUrls("http://127.0.0.1:5000/v2/ without query"),
    "http://127.0.0.1:5000/v2/ without query",
  );
  equal(
    redactUrls('"https://a/b?sig=1" and http://c/d?e=f'),
    '"https://a/b?REDACTED" and http://c/d?REDACTED',
  );
});

/** The lines logged by `fn` with logging set up in `format`. */
function capture(format: string, fn: () => void, color = false): string[] {
  const lines: string[] = [];
  setupLogging("debug", { format, color, terminal: false, write: (line) => lines.push(line) });
  try {
    fn();
  } finally {
    setupLogging("warning", { format: "json", terminal: false, write: () => {} });
  }
  return lines;
}

function requestLine(): void {
  log.info("{method} {path} {status}", {
    method: "GET",
    path: "/v2/",
    status: 200,
    bytes: 2,
    cache: undefined,
    error: "upstream quay.io answered 503",
  });
}

Deno.test("logs: values in messages are not quoted; lists are joined", () => {
  equal(
    renderMessage(["listening on ", "127.0.0.1", ":", 18890, ""]),
    "listening on 127.0.0.1:18890",
  );
  equal(renderMessage(["for ", ["quay.io", "ghcr.io"], ""]), "for quay.io, ghcr.io");
  equal(renderMessage(["", { a: 1 }, " ", null, " ", new Error("boom"), ""]), '{"a":1} null boom');
});

Deno.test("logs: JSON lines keep LogTape's fields, with the message unquoted", () => {
  const [line] = capture("json", requestLine);
  const parsed = JSON.parse(line);
  deepEqual(Object.keys(parsed), ["@timestamp", "level", "message", "logger", "properties"]);
  equal(parsed.level, "INFO");
  equal(parsed.message, "GET /v2/ 200");
  equal(parsed.logger, "registry-mirror");
  deepEqual(parsed.properties, {
    method: "GET",
    path: "/v2/",
    status: 200,
    bytes: 2,
    error: "upstream quay.io answered 503",
  });
  equal(line.endsWith("}\n"), true, "one line per record");
});

Deno.test("logs: text lines show time, level, message, then the other properties", () => {
  const [plain] = capture("text", requestLine);
  match(
    plain,
    /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INF GET \/v2\/ 200 bytes=2 error="upstream quay\.io answered 503"\n$/,
  );
  const [coloured] = capture("text", requestLine, true);
  // deno-lint-ignore no-control-regex -- the ANSI colour codes are what is tested
  match(coloured, /\x1b\[32mINF\x1b\[0m GET \/v2\/ 200 \x1b\[2mbytes=2 /);
  const [warning] = capture("text", () => log.warn("disk {state}", { state: "full\x1b[2J" }));
  match(warning, / WRN disk full\\x1b\[2J\n$/, "control sequences from values are escaped");
});

Deno.test("logs: text at a terminal, JSON otherwise, unless MIRROR_LOG_FORMAT says", () => {
  equal(logFormat(undefined, true), "text");
  equal(logFormat(undefined, false), "json");
  equal(logFormat("", false), "json");
  equal(logFormat("json", true), "json");
  equal(logFormat("text", false), "text");
  throws(() => logFormat("yaml", false), /MIRROR_LOG_FORMAT: unknown format "yaml" \(json, text\)/);
  throws(() => setupLogging("loud"), /MIRROR_LOG_LEVEL: unknown level "loud"/);
});

Deno.test("log lines: those of one task are written together, in order, when it ends", async () => {
  const writes: string[] = [];
  const batch = new LineBatch((text) => writes.push(text));
  batch.add("a\n");
  batch.add("b\n");
  deepEqual(writes, [], "nothing written while the task runs");
  await Promise.resolve();
  deepEqual(writes, ["a\nb\n"], "one write for the task's lines, in order");
  batch.add("c\n");
  batch.flush();
  deepEqual(writes.at(-1), "c\n", "flush writes what is queued (at exit)");
  await Promise.resolve();
  equal(writes.length, 2, "nothing is written twice");
});

Deno.test("log lines: the last ones reach stderr when the process exits or fails", async () => {
  const logModule = new URL("./log.ts", import.meta.url).href;
  for (const end of ["Deno.exit(3)", "throw new Error('boom')", "undefined"]) {
    const script = `import { log, setupLogging } from "${logModule}";
      setupLogging("info", { format: "json", terminal: false });
      setTimeout(() => { log.info("last {n}", { n: 1 }); ${end}; }, 1);`;
    const { stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--ext=ts", script],
      stdout: "null",
      stderr: "piped",
    }).output();
    match(new TextDecoder().decode(stderr), /"message":"last 1"/, end);
  }
});
