import { equal, rejects } from "node:assert/strict";
import bcrypt from "bcryptjs";
import { BcryptPool } from "./bcrypt_pool.ts";

Deno.test("bcrypt pool: matches and mismatches, counted, in worker threads", async () => {
  const pool = new BcryptPool({ size: 2 });
  try {
    const hash = bcrypt.hashSync("wonderland", 4);
    const results = await Promise.all(
      ["wonderland", "nope", "wonderland", ""].map((p) => pool.verify(p, hash)),
    );
    equal(results.join(), "true,false,true,false");
    equal(pool.checks, 4);
  } finally {
    pool.close();
  }
});

Deno.test("bcrypt pool: the event loop runs while a slow hash is checked", async () => {
  const pool = new BcryptPool({ size: 1 });
  try {
    const hash = bcrypt.hashSync("x", 4);
    await pool.verify("x", hash); // the worker is up
    const order: string[] = [];
    // Any complete hash costs its full cost: 2^10 rounds, ~100 ms or more.
    const slow = pool.verify("nope", `$2b$10$${"a".repeat(53)}`).then(() => order.push("bcrypt"));
    await new Promise((resolve) => setTimeout(resolve, 0)).then(() => order.push("timer"));
    await slow;
    equal(order.join(), "timer,bcrypt");
  } finally {
    pool.close();
  }
});

Deno.test("bcrypt pool: a hash that cannot be checked rejects; the pool goes on", async () => {
  const pool = new BcryptPool({ size: 1 });
  try {
    await rejects(pool.verify("x", `$2x$04$${"a".repeat(53)}`), /^Error: bcrypt: /);
    equal(await pool.verify("x", bcrypt.hashSync("x", 4)), true);
  } finally {
    pool.close();
  }
});

Deno.test("bcrypt pool: closing rejects the checks still waiting", async () => {
  const pool = new BcryptPool({ size: 1 });
  const waiting = pool.verify("x", bcrypt.hashSync("x", 4));
  pool.close();
  await rejects(waiting, /closed/);
});
