import { equal, match, ok } from "node:assert/strict";
import { allocatorWarning, GLIBC_TUNABLES } from "./allocator.ts";

const ROOT = new URL("../", import.meta.url).pathname;

Deno.test("allocator: deno task start sets the settings", async () => {
  const meta = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  match(meta.tasks.start, new RegExp(`(^| )GLIBC_TUNABLES=${GLIBC_TUNABLES} .*\\bdeno run `));
});

Deno.test("allocator: the container image sets the settings for the executable", async () => {
  const dockerfile = await Deno.readTextFile(`${ROOT}Dockerfile`);
  const final = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));
  equal(final.match(/^ENV GLIBC_TUNABLES=(\S+)$/m)?.[1], GLIBC_TUNABLES);
});

Deno.test("allocator: the README gives the same settings", async () => {
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  ok(readme.includes("`GLIBC_TUNABLES=" + GLIBC_TUNABLES + "`"), "the README's settings differ");
});

Deno.test("allocator: a warning on Linux without the settings, none with them or elsewhere", () => {
  match(allocatorWarning("linux", undefined)!, /GLIBC_TUNABLES=glibc\.malloc\.mmap_threshold=/);
  match(allocatorWarning("linux", "glibc.malloc.arena_max=2")!, /1\.2-1\.8x slower/);
  equal(allocatorWarning("linux", GLIBC_TUNABLES), undefined);
  equal(allocatorWarning("linux", `glibc.malloc.arena_max=2:${GLIBC_TUNABLES}`), undefined);
  equal(allocatorWarning("darwin", undefined), undefined);
});
