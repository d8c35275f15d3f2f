import { equal } from "node:assert/strict";
import { SharedBytes } from "./shared_bytes.ts";

Deno.test("shared bytes: freed once no longer kept, every part sent and every hold released", () => {
  const shared = new SharedBytes(100, new Uint8Array(1000).fill(7));
  equal(shared.has(99), false);
  equal(shared.has(100), true);
  equal(shared.has(1099), true);
  equal(shared.has(1100), false);
  const a = shared.part(100, 600);
  const b = shared.part(600, 2000);
  equal(a.bytes.length, 500);
  equal(b.bytes.length, 500, "a part ends with the bytes");
  shared.hold();
  a.sent();
  a.sent(); // twice counts once
  shared.unkeep();
  b.sent();
  equal(shared.bytes.length, 1000, "held");
  shared.release();
  equal(shared.bytes.length, 0, "freed");
  equal(a.bytes.length, 0);
  equal(shared.has(100), true, "the range it covered stays known");
});

Deno.test("shared bytes: bytes in a buffer not owned are left to the collector", () => {
  const buffer = new Uint8Array(1000);
  const shared = new SharedBytes(0, buffer.subarray(0, 500), false);
  shared.part(0, 500).sent();
  shared.unkeep();
  equal(shared.bytes.length, 500);
  equal(buffer.length, 1000, "the rest of the buffer is untouched");
});
