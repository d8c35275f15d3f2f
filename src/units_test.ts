import { equal } from "node:assert/strict";
import { parseDuration, parseSize } from "./units.ts";

Deno.test("units: durations and sizes as written in the config", () => {
  const durations: [string, number | undefined][] = [
    ["500ms", 500],
    ["30s", 30_000],
    ["5m", 300_000],
    ["2h", 7_200_000],
    ["1.5s", 1500],
    ["1d", 86_400_000],
    ["5", undefined],
    ["5 minutes", undefined],
    ["-1s", undefined],
  ];
  for (const [text, ms] of durations) equal(parseDuration(text), ms, text);
  const sizes: [string, number | undefined][] = [
    ["500MB", 500_000_000],
    ["50GiB", 50 * 2 ** 30],
    ["1.5KiB", 1536],
    ["10 gb", 10_000_000_000],
    ["100B", 100],
    ["100", undefined],
    ["5XB", undefined],
  ];
  for (const [text, bytes] of sizes) equal(parseSize(text), bytes, text);
});
