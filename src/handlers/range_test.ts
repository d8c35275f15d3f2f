import { deepEqual } from "node:assert/strict";
import { parseRange } from "./range.ts";

Deno.test("parseRange: the forms clients send, and what is not a range we serve", () => {
  const cases: [string | null, ReturnType<typeof parseRange>][] = [
    ["bytes=0-99", { start: 0, end: 100 }],
    ["bytes=100-", { start: 100, end: 1000 }],
    ["bytes=900-5000", { start: 900, end: 1000 }],
    ["bytes=-10", { start: 990, end: 1000 }],
    ["bytes=-5000", { start: 0, end: 1000 }],
    ["bytes = 5 - 9", { start: 5, end: 10 }],
    ["bytes=1000-", "unsatisfiable"],
    ["bytes=-0", "unsatisfiable"],
    ["bytes=10-5", "unsatisfiable"],
    [null, undefined],
    ["bytes=0-1,5-6", undefined],
    ["items=0-1", undefined],
    ["bytes=-", undefined],
  ];
  for (const [header, expected] of cases) {
    deepEqual(parseRange(header, 1000), expected, String(header));
  }
});
