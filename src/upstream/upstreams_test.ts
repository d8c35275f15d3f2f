import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { buildConfig } from "../config.ts";
import { MirrorMetrics } from "../metrics.ts";
import { RegistryError } from "../oci/errors.ts";
import { COOL_DOWN_MS, FAILURE_THRESHOLD } from "./breaker.ts";
import { limitedUntil, type SourcedRequest, Upstreams } from "./upstreams.ts";

/** What a fake upstream does with a request: answer a status, or be unreachable. */
type Behaviour = number | "down" | ((path: string) => Response);

/**
 * Three fake upstreams (fault injection: an outage cannot be asked of a real one per request):
 * the primary, a fallback trusted with tags and one that is not. Every request is counted.
 */
function setup(fallbacks: { host: string; trustTags: boolean }[] = [
  { host: "copy.test", trustTags: true },
  { host: "untrusted.test", trustTags: false },
]) {
  let time = 1_700_000_000_000;
  const now = () => time;
  const behaviour = new Map<string, Behaviour>([["primary.test", 200]]);
  for (const f of fallbacks) behaviour.set(f.host, 200);
  const asked: string[] = [];
  const fetch = (input: URL | RequestInfo) => {
    const url = new URL(String(input));
    asked.push(`${url.host}${url.pathname}`);
    const b = behaviour.get(url.host) ?? 404;
    if (b === "down") return Promise.reject(new TypeError("fetch failed: connection refused"));
    if (typeof b === "function") return Promise.resolve(b(url.pathname));
    return Promise.resolve(new Response(b === 200 ? `from ${url.host}` : "{}", { status: b }));
  };
  const config = buildConfig({
    registries: {
      "reg.test": {
        upstream: "https://primary.test",
        fallbacks: fallbacks.map((f) => ({
          upstream: `https://${f.host}`,
          trustTags: f.trustTags,
        })),
      },
    },
    upstream: { retries: 2 },
  }, { env: {}, readTextFile: () => "" });
  const metrics = new MirrorMetrics();
  const upstreams = new Upstreams(config.registries.get("reg.test")!, {
    ...config.upstream,
    userAgent: "test",
    fetch: fetch as typeof globalThis.fetch,
    metrics,
    now,
  });
  const ask = async (trust: "digest" | "tag", path = "/v2/app/blobs/sha256:1") => {
    const req: SourcedRequest = { method: "GET", path, trust };
    const answer = await upstreams.request(req, { upstreamBytes: 0, retries: 0 });
    return [answer.via, answer.response.status, await answer.response.text()];
  };
  const count = (host: string) => asked.filter((a) => a.startsWith(host)).length;
  return {
    upstreams,
    behaviour,
    asked,
    count,
    ask,
    metrics,
    advance: (ms: number) => time += ms,
    now,
  };
}

Deno.test("upstreams: the primary's answers are taken, a 404 too: no fallback is asked", async () => {
  const t = setup();
  deepEqual(await t.ask("digest"), ["primary.test", 200, "from primary.test"]);
  t.behaviour.set("primary.test", 404);
  deepEqual(await t.ask("digest"), ["primary.test", 404, "{}"]);
  t.behaviour.set("primary.test", 401);
  deepEqual(await t.ask("tag"), ["primary.test", 401, "{}"]);
  deepEqual([t.count("copy.test"), t.count("untrusted.test")], [0, 0]);
});

Deno.test("upstreams: a primary outage sends content by digest to the fallbacks in order, without retrying the primary", async () => {
  for (const failure of ["down", 500, 503, 429] as const) {
    const t = setup();
    t.behaviour.set("primary.test", failure);
    deepEqual(await t.ask("digest"), ["copy.test", 200, "from copy.test"], String(failure));
    equal(t.count("primary.test"), 1, `${failure}: one attempt, no retries`);
    t.behaviour.set("copy.test", "down");
    deepEqual(await t.ask("digest"), ["untrusted.test", 200, "from untrusted.test"]);
  }
});

Deno.test("upstreams: tags go only to fallbacks with trustTags; otherwise the error names the outage", async () => {
  const t = setup();
  t.behaviour.set("primary.test", "down");
  deepEqual(await t.ask("tag"), ["copy.test", 200, "from copy.test"]);
  t.behaviour.set("copy.test", 503);
  const error = await t.ask("tag").catch((e) => e);
  ok(error instanceof RegistryError, String(error));
  deepEqual([error.status, error.code], [503, "UNAVAILABLE"]);
  match(error.message, /^reg\.test: no upstream could answer: /);
  match(error.message, /upstream https:\/\/primary\.test: .*unreachable/);
  match(error.message, /fallback https:\/\/copy\.test answered 503/);
  match(
    error.message,
    /tags are not taken from fallbacks without "trustTags": true \(https:\/\/untrusted\.test\)/,
  );
  equal(t.count("untrusted.test"), 0, "the untrusted fallback was never asked for a tag");
  // The primary, the only upstream that may answer, gets its retries.
  const only = setup([{ host: "untrusted.test", trustTags: false }]);
  only.behaviour.set("primary.test", 503);
  await rejects(only.ask("tag"), /no upstream could answer: upstream https:\/\/primary\.test/);
  equal(only.count("primary.test"), 3, "1 try + 2 retries");
});

Deno.test("upstreams: a fallback's 404 or a refused answer goes to the next; take refusing content distrusts it", async () => {
  const t = setup([{ host: "bad.test", trustTags: false }, {
    host: "copy.test",
    trustTags: false,
  }]);
  t.behaviour.set("primary.test", "down");
  t.behaviour.set("bad.test", 404);
  deepEqual(await t.ask("digest"), ["copy.test", 200, "from copy.test"]);
  t.behaviour.set("bad.test", 200);
  const req: SourcedRequest = { method: "GET", path: "/v2/app/blobs/sha256:2", trust: "digest" };
  const progress = { upstreamBytes: 0, retries: 0 };
  const taken = await t.upstreams.fetch(req, progress, async ({ response, via }) => {
    const text = await response.text();
    if (via === "bad.test") {
      throw new RegistryError("MANIFEST_INVALID", `digest mismatch: ${text}`, { status: 502 });
    }
    return text;
  });
  equal(taken, "from copy.test");
  const bad = t.upstreams.statuses().find((s) => s.upstream === "bad.test")!;
  deepEqual([bad.state, bad.failures], ["skipped", 1]);
  match(bad.lastError!, /sent content that does not match its digest: digest mismatch/);
  const before = t.count("bad.test");
  deepEqual(await t.ask("digest"), ["copy.test", 200, "from copy.test"]);
  equal(t.count("bad.test"), before, "the corrupt fallback is skipped for its cool-down");
  const corrupt = await t.metrics.upstreamAnswers.get();
  ok(corrupt.values.some((v) => v.labels.outcome === "corrupt" && v.value === 1));
  // A body that breaks is a failure like any other, not a verdict on the content.
  const broken = await t.upstreams.fetch(req, progress, ({ via }) => {
    if (via === "copy.test") throw new TypeError("error reading a body from connection");
    return Promise.resolve(via);
  }).catch((e) => e);
  match(String(broken), /fallback https:\/\/copy\.test: error reading a body/);
  const copy = t.upstreams.statuses().find((s) => s.upstream === "copy.test")!;
  deepEqual([copy.state, copy.failures], ["failing", 1]);
});

Deno.test("upstreams: a failing primary is skipped after the threshold, probed after the cool-down, used again when back", async () => {
  const t = setup();
  t.behaviour.set("primary.test", "down");
  for (let i = 0; i < 10; i++) {
    deepEqual(await t.ask("digest"), ["copy.test", 200, "from copy.test"], `request ${i + 1}`);
  }
  equal(t.count("primary.test"), FAILURE_THRESHOLD, "10 requests, the primary asked 3 times");
  const primary = () => t.upstreams.statuses().find((s) => s.role === "primary")!;
  equal(primary().state, "skipped");
  equal(primary().skippedUntil, new Date(t.now() + COOL_DOWN_MS).toISOString());

  t.advance(COOL_DOWN_MS);
  equal(primary().state, "half-open");
  deepEqual(await t.ask("digest"), ["copy.test", 200, "from copy.test"], "a failed probe");
  equal(t.count("primary.test"), FAILURE_THRESHOLD + 1);
  await t.ask("digest");
  equal(t.count("primary.test"), FAILURE_THRESHOLD + 1, "reopened: skipped again");

  t.behaviour.set("primary.test", 200);
  t.advance(COOL_DOWN_MS);
  deepEqual(await t.ask("digest"), ["primary.test", 200, "from primary.test"], "the probe");
  equal(primary().state, "up");
  deepEqual(await t.ask("tag"), ["primary.test", 200, "from primary.test"]);
});

Deno.test("upstreams: while the primary is skipped and no fallback may answer, fail at once with Retry-After", async () => {
  const t = setup([{ host: "untrusted.test", trustTags: false }]);
  t.behaviour.set("primary.test", "down");
  for (let i = 0; i < FAILURE_THRESHOLD; i++) await t.ask("digest");
  const asked = t.count("primary.test");
  const error = await t.ask("tag").catch((e) => e);
  equal(t.count("primary.test"), asked, "not asked");
  deepEqual([error.status, error.headers["retry-after"]], [503, String(COOL_DOWN_MS / 1000)]);
  match(error.message, /upstream https:\/\/primary\.test is skipped until .* after 3 failures/);
});

Deno.test("upstreams: Docker Hub's 429 with rate-limit headers skips the primary until the window resets", async () => {
  const t = setup();
  const window = 21600;
  t.behaviour.set("primary.test", () =>
    new Response("{}", {
      status: 429,
      headers: { "ratelimit-limit": `100;w=${window}`, "ratelimit-remaining": `0;w=${window}` },
    }));
  deepEqual(await t.ask("digest"), ["copy.test", 200, "from copy.test"]);
  const primary = () => t.upstreams.statuses().find((s) => s.role === "primary")!;
  deepEqual(
    [primary().state, primary().skippedUntil],
    ["skipped", new Date(t.now() + window * 1000).toISOString()],
    "one 429 is enough",
  );
  t.advance(window * 1000 - 1);
  await t.ask("digest");
  equal(t.count("primary.test"), 1, "not asked again within the window");
  // With no fallback able to answer, the client is told when to come back.
  const error = await setupLimited().catch((e) => e);
  deepEqual([error.status, error.code, error.headers["retry-after"]], [
    429,
    "TOOMANYREQUESTS",
    "60",
  ]);
});

async function setupLimited() {
  const t = setup([{ host: "untrusted.test", trustTags: false }]);
  t.behaviour.set(
    "primary.test",
    () => new Response("{}", { status: 429, headers: { "retry-after": "60" } }),
  );
  return await t.ask("tag");
}

Deno.test("upstreams: without fallbacks the primary's answer is passed on, and it is never skipped", async () => {
  const t = setup([]);
  t.behaviour.set("primary.test", 503);
  for (let i = 0; i < FAILURE_THRESHOLD * 2; i++) {
    deepEqual(await t.ask("digest"), ["primary.test", 503, "{}"]);
  }
  equal(t.count("primary.test"), FAILURE_THRESHOLD * 2 * 3, "each request: 1 try + 2 retries");
  const [primary] = t.upstreams.statuses();
  deepEqual([primary.state, primary.failures], ["failing", FAILURE_THRESHOLD * 2]);
  t.behaviour.set("primary.test", "down");
  await rejects(t.ask("digest"), /upstream reg\.test \(https:\/\/primary\.test\) unreachable/);
});

Deno.test("upstreams: visibility is asked of the primary, in its outage of trusted fallbacks only", async () => {
  const t = setup();
  const tags = (status: number) => () => Response.json({ tags: [] }, { status });
  t.behaviour.set("primary.test", tags(401));
  equal(await t.upstreams.isPublic("org/app"), false);
  t.behaviour.set("primary.test", "down");
  t.behaviour.set("copy.test", tags(200));
  t.behaviour.set("untrusted.test", tags(200));
  equal(await t.upstreams.isPublic("org/app"), true, "the trusted fallback's verdict");
  t.behaviour.set("copy.test", "down");
  await rejects(t.upstreams.isPublic("org/app"), /unreachable/);
  equal(t.count("untrusted.test"), 0);
});

Deno.test("limitedUntil: Retry-After, RateLimit-Reset, Docker Hub's spent window, or nothing", () => {
  const now = 1_000_000;
  const at = (headers: Record<string, string>) => limitedUntil(new Headers(headers), now);
  equal(at({ "retry-after": "30", "ratelimit-remaining": "0;w=21600" }), now + 30_000);
  equal(at({ "ratelimit-reset": "120" }), now + 120_000);
  equal(
    at({ "ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600" }),
    now + 21600e3,
  );
  equal(at({ "ratelimit-remaining": "3;w=21600" }), undefined, "pulls left: an ordinary 429");
  equal(at({}), undefined);
});
