import { deepEqual, equal, ok } from "node:assert/strict";
import { RegistryError } from "../oci/errors.ts";
import { type LoginAttempt, LoginBackoff } from "./login_backoff.ts";

function setup() {
  const clock = { now: 1_000_000 };
  const backoff = new LoginBackoff({ now: () => clock.now });
  /** Begins a check for `client` and ends it with `matched`; the 429's Retry-After if refused. */
  const attempt = (client: string, matched = false): string | undefined => {
    const ticket = backoff.begin(client);
    if (ticket instanceof RegistryError) {
      equal(ticket.status, 429);
      equal(ticket.code, "TOOMANYREQUESTS");
      return ticket.headers["retry-after"];
    }
    backoff.end(ticket, matched);
    return undefined;
  };
  return { clock, backoff, attempt };
}

Deno.test("login backoff: five failures are free, then each waits twice as long, up to 5 minutes", () => {
  const { clock, attempt } = setup();
  for (let i = 0; i < 6; i++) equal(attempt("a"), undefined, `failure ${i + 1} is checked`);
  const waits = [];
  for (let i = 0; i < 12; i++) {
    const retryAfter = attempt("a");
    ok(retryAfter, `refused while waiting (${i})`);
    waits.push(Number(retryAfter));
    clock.now += Number(retryAfter) * 1000 - 1;
    equal(attempt("a"), "1", "still waiting 1 ms before the end");
    clock.now += 1;
    equal(attempt("a"), undefined, "checked once the wait is over");
  }
  deepEqual(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
});

Deno.test("login backoff: clients wait alone, and failures are forgotten 15 minutes after the last", () => {
  const { clock, attempt } = setup();
  for (let i = 0; i < 6; i++) attempt("a");
  equal(attempt("a"), "1");
  equal(attempt("b"), undefined, "another client is checked");
  clock.now += 15 * 60_000 - 1;
  equal(attempt("a", true), undefined, "the wait is long over");
  equal(attempt("a"), undefined);
  equal(attempt("a"), "2", "still remembered: the seventh failure doubled the wait");
  clock.now += 15 * 60_000 + 1;
  for (let i = 0; i < 6; i++) equal(attempt("a"), undefined, "forgotten: five free failures again");
  equal(attempt("a"), "1");
});

Deno.test("login backoff: a success forgives no failure", () => {
  const { clock, attempt } = setup();
  for (let i = 0; i < 5; i++) attempt("a");
  equal(attempt("a", true), undefined);
  equal(attempt("a"), undefined, "the sixth failure is checked");
  equal(attempt("a", true), "1", "and makes the client wait, with a right password too");
  clock.now += 1_000;
  equal(attempt("a", true), undefined);
});

Deno.test("login backoff: parallel checks of one client are bounded by its free failures", () => {
  const { backoff } = setup();
  const begin = () => backoff.begin("a");
  const tickets = Array.from({ length: 6 }, begin);
  ok(tickets.every((t) => !(t instanceof RegistryError)), "six at once for a fresh client");
  const seventh = begin();
  ok(seventh instanceof RegistryError);
  equal(seventh.headers["retry-after"], "1");
  for (const t of tickets.slice(0, 4)) backoff.end(t as LoginAttempt, false);
  ok(begin() instanceof RegistryError, "four failed and two running: no room left");
  backoff.abandon(tickets[4] as LoginAttempt);
  const next = begin();
  ok(!(next instanceof RegistryError), "a check that could not run frees its place");
  backoff.end(tickets[5] as LoginAttempt, false);
  backoff.end(next as LoginAttempt, false);
  equal((begin() as RegistryError).status, 429, "six failures: waiting");
});
