import { deepEqual, equal } from "node:assert/strict";
import { Breaker, COOL_DOWN_MS, FAILURE_THRESHOLD } from "./breaker.ts";

function clock() {
  let time = 1_700_000_000_000;
  return { now: () => time, advance: (ms: number) => time += ms };
}

Deno.test("breaker: opens after the threshold of failures in a row, skips for the cool-down", () => {
  const { now, advance } = clock();
  const breaker = new Breaker({ now });
  for (let i = 1; i < FAILURE_THRESHOLD; i++) {
    equal(breaker.allow(), true, `request ${i}`);
    breaker.failure(`refused ${i}`);
    deepEqual(breaker.status(), { state: "failing", failures: i, lastError: `refused ${i}` });
  }
  equal(breaker.allow(), true);
  breaker.failure("refused 3");
  const skippedUntil = now() + COOL_DOWN_MS;
  deepEqual(breaker.status(), {
    state: "skipped",
    failures: FAILURE_THRESHOLD,
    skippedUntil,
    lastError: "refused 3",
  });
  equal(breaker.allow(), false, "skipped while open");
  advance(COOL_DOWN_MS - 1);
  equal(breaker.allow(), false, "still skipped 1 ms before the end of the cool-down");
  equal(breaker.skipping, true);
});

Deno.test("breaker: an answer between failures resets the count", () => {
  const { now } = clock();
  const breaker = new Breaker({ now });
  for (let round = 0; round < 3; round++) {
    for (let i = 1; i < FAILURE_THRESHOLD; i++) breaker.failure("timeout");
    breaker.success();
  }
  deepEqual(breaker.status(), { state: "up", failures: 0 });
  equal(breaker.allow(), true);
});

Deno.test("breaker: after the cool-down one probe at a time; its outcome closes or reopens", () => {
  const { now, advance } = clock();
  const breaker = new Breaker({ now });
  for (let i = 0; i < FAILURE_THRESHOLD; i++) breaker.failure("unreachable");
  advance(COOL_DOWN_MS);
  equal(breaker.status().state, "half-open");
  equal(breaker.allow(), true, "the probe");
  equal(breaker.allow(), false, "a second request while the probe is in flight");
  breaker.failure("still unreachable");
  equal(breaker.status().state, "skipped");
  equal(breaker.status().skippedUntil, now() + COOL_DOWN_MS, "a failed probe reopens it");
  equal(breaker.allow(), false);

  advance(COOL_DOWN_MS);
  equal(breaker.allow(), true, "the next probe");
  breaker.release(); // cancelled: no outcome
  equal(breaker.allow(), true, "another request may probe");
  breaker.success();
  deepEqual(breaker.status(), { state: "up", failures: 0 });
  equal(breaker.allow(), true);
  equal(breaker.allow(), true, "closed: every request goes");
});

Deno.test("breaker: a rate limit's reset opens it at once until then", () => {
  const { now, advance } = clock();
  const breaker = new Breaker({ now });
  const reset = now() + 6 * 3600_000;
  breaker.failure("answered 429", reset);
  deepEqual(breaker.status(), {
    state: "skipped",
    failures: 1,
    skippedUntil: reset,
    lastError: "answered 429",
  });
  advance(COOL_DOWN_MS * 10);
  equal(breaker.allow(), false, "the window outlasts the cool-down");
  advance(reset - now());
  equal(breaker.allow(), true, "probed once the window has reset");
  breaker.success();
  equal(breaker.status().state, "up");
  // A short reset never shortens a cool-down already running.
  for (let i = 0; i < FAILURE_THRESHOLD; i++) breaker.failure("503");
  breaker.failure("429", now() + 1000);
  equal(breaker.status().skippedUntil, now() + COOL_DOWN_MS);
});

Deno.test("breaker: trip opens at once (a corrupt answer)", () => {
  const { now } = clock();
  const breaker = new Breaker({ now });
  breaker.trip("digest mismatch");
  equal(breaker.allow(), false);
  deepEqual(breaker.status(), {
    state: "skipped",
    failures: 1,
    skippedUntil: now() + COOL_DOWN_MS,
    lastError: "digest mismatch",
  });
});

Deno.test("breaker: without anywhere else to go it counts failures but never skips", () => {
  const { now } = clock();
  const breaker = new Breaker({ now, skips: false });
  for (let i = 0; i < FAILURE_THRESHOLD * 3; i++) {
    equal(breaker.allow(), true, `request ${i + 1}`);
    breaker.failure("unreachable", now() + 60_000);
  }
  deepEqual(breaker.status(), {
    state: "failing",
    failures: FAILURE_THRESHOLD * 3,
    lastError: "unreachable",
  });
  equal(breaker.skipping, false);
});
