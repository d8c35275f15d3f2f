// End to end: the dashboard in headless Chromium (Debian's, driven by playwright-core) shows the
// numbers /api/stats reports after real pulls; a screenshot is kept in artifacts/.

import { equal, ok } from "node:assert/strict";
import { chromium } from "playwright-core";
import { startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { pushImage } from "./fixtures/seed.ts";
import { skipUnless } from "./fixtures/tools.ts";

const ARTIFACTS = new URL("../artifacts/", import.meta.url).pathname;

Deno.test({
  name: "dashboard: renders the live numbers of real pulls in headless Chromium",
  ...skipUnless(["docker-registry", "chromium"]),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "dashboard_test_" });
    const registry = await startRegistry({ dir: `${dir}/quay` });
    const mirror = await startMirror(dir, {
      registries: { "quay.io": { upstream: registry.url } },
      cache: { dir: `${dir}/cache`, maxSize: "1GiB" },
    });
    const browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    try {
      const image = await pushImage(registry.url, "org/app", "1", {
        files: { "app.txt": "dashboard" },
        format: "oci",
      });
      for (let i = 0; i < 3; i++) {
        for (const path of ["manifests/1", `blobs/${image.layer.digest}`]) {
          const r = await fetch(`${mirror.url}/v2/quay.io/org/app/${path}`);
          await r.arrayBuffer();
        }
      }
      const failed = await fetch(`${mirror.url}/v2/quay.io/org/none/manifests/1`);
      await failed.body?.cancel();
      const stats = await (await fetch(`${mirror.url}/api/stats`)).json();
      equal(stats.cache.hits, 4);
      equal(stats.topImages[0].image, "quay.io/org/app:1");

      const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
      await page.goto(`${mirror.url}/`);
      await page.waitForSelector("#hit-ratio[data-value]");
      equal(await page.textContent("#hit-ratio"), `${(100 * stats.cache.hitRatio).toFixed(1)}%`);
      equal(
        Number(await page.getAttribute("#bytes-saved", "data-value")),
        stats.cache.bytesServed,
      );
      ok(stats.cache.bytesServed >= 2 * image.layer.size);
      equal(await page.textContent("#cache-max"), "of 1.0 GiB");
      const quay = page.locator("#registries tr", { hasText: "quay.io" });
      const cells = await quay.locator("td").allTextContents();
      equal(
        cells[1],
        String(
          stats.registries.find((r: { name: string }) => r.name === "quay.io").upstreamRequests,
        ),
      );
      equal(
        await page.textContent("#top-images tr:first-child td:first-child"),
        "quay.io/org/app:1",
      );
      equal(await page.textContent("#top-images tr:first-child td:last-child"), "3");
      await Deno.mkdir(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: `${ARTIFACTS}/dashboard.png`, fullPage: true });
      ok((await Deno.stat(`${ARTIFACTS}/dashboard.png`)).size > 10_000);
    } finally {
      await browser.close();
      await mirror.stop();
      await registry.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
