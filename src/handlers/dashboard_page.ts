// The dashboard: one self-contained page (no external assets) that polls /api/stats.

import { createHash } from "node:crypto";

const STYLE = `
  :root { font-family: system-ui, sans-serif; color: #1d2430; background: #f5f6f8; }
  body { margin: 0; padding: 24px; }
  h1 { font-size: 20px; margin: 0 0 16px; }
  h2 { font-size: 15px; margin: 24px 0 8px; }
  .cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 12px; }
  .card { background: #fff; border-radius: 8px; padding: 12px 16px; box-shadow: 0 1px 2px #0002; }
  .card .label { font-size: 12px; color: #5b6472; }
  .card .value { font-size: 24px; font-weight: 600; margin-top: 4px; }
  .bar { height: 8px; background: #e3e6eb; border-radius: 4px; margin-top: 8px; overflow: hidden; }
  .bar div { height: 100%; background: #2f6fde; width: 0; }
  table { width: 100%; border-collapse: collapse; background: #fff; border-radius: 8px;
          box-shadow: 0 1px 2px #0002; font-size: 13px; }
  th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #eef0f3; }
  th { color: #5b6472; font-weight: 500; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .muted { color: #8a93a1; font-size: 12px; }
  .error { color: #b3261e; }
  .state-up { color: #1e7b34; }
  .state-failing, .state-half-open { color: #a05a00; }
  .state-skipped { color: #b3261e; font-weight: 600; }
`;

const SCRIPT = `
"use strict";
const units = ["B", "KiB", "MiB", "GiB", "TiB"];
function bytes(n) {
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}
function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}
function rows(id, items, render) {
  const body = document.getElementById(id);
  body.replaceChildren(...items.map((item) => {
    const tr = document.createElement("tr");
    tr.append(...render(item));
    return tr;
  }));
}
async function refresh() {
  try {
    const s = await (await fetch("/api/stats", { cache: "no-store" })).json();
    const c = s.cache;
    document.getElementById("hit-ratio").textContent = (100 * c.hitRatio).toFixed(1) + "%";
    document.getElementById("hit-ratio").dataset.value = String(c.hitRatio);
    document.getElementById("bytes-saved").textContent = bytes(c.bytesServed);
    document.getElementById("bytes-saved").dataset.value = String(c.bytesServed);
    document.getElementById("requests").textContent = String(s.requests);
    document.getElementById("cache-used").textContent = bytes(c.sizeBytes);
    document.getElementById("cache-used").dataset.value = String(c.sizeBytes);
    document.getElementById("cache-max").textContent =
      c.maxSizeBytes ? "of " + bytes(c.maxSizeBytes) : "no size limit";
    document.getElementById("cache-bar").style.width =
      c.maxSizeBytes ? Math.min(100, 100 * c.sizeBytes / c.maxSizeBytes) + "%" : "0";
    document.getElementById("objects").textContent = c.objects + " / " + c.fillsInFlight;
    rows("registries", s.registries, (r) => [
      cell(r.name), cell(String(r.upstreamRequests), "num"),
      cell(String(r.upstreamErrors), r.upstreamErrors ? "num error" : "num"),
      cell(bytes(r.upstreamBytes), "num"), cell(bytes(r.cacheBytes), "num"),
      cell(r.rateLimitRemaining === null ? "–" : String(r.rateLimitRemaining), "num"),
    ]);
    rows("upstreams", s.upstreams, (u) => [
      cell(u.registry), cell(u.upstream), cell(u.role + (u.role === "fallback" && u.trustTags
        ? " (trusts tags)" : "")),
      cell(u.state + (u.skippedUntil ? " until " + u.skippedUntil.slice(11, 19) : ""),
        "state-" + u.state),
      cell(String(u.failures), "num"), cell(u.lastError || ""),
    ]);
    rows("top-images", s.topImages, (i) => [cell(i.image), cell(String(i.pulls), "num")]);
    rows("errors", s.recentErrors, (e) => [
      cell(e.at.slice(11, 19)), cell(e.registry), cell(String(e.status), "num"), cell(e.message),
    ]);
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString() + ", up " + s.uptimeSeconds + " s";
  } catch (e) {
    document.getElementById("updated").textContent = "cannot reach the mirror: " + e;
  }
}
refresh();
setInterval(refresh, 2000);
`;

/** The page served at `/`. */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>registry-mirror</title>
<style>${STYLE}</style>
</head>
<body>
<h1>registry-mirror <span class="muted" id="updated">loading…</span></h1>
<div class="cards">
  <div class="card"><div class="label">Cache hit ratio</div><div class="value" id="hit-ratio">–</div></div>
  <div class="card"><div class="label">Bytes served from cache</div><div class="value" id="bytes-saved">–</div></div>
  <div class="card"><div class="label">Requests</div><div class="value" id="requests">–</div></div>
  <div class="card"><div class="label">Cache use</div><div class="value" id="cache-used">–</div>
    <div class="muted" id="cache-max"></div><div class="bar"><div id="cache-bar"></div></div></div>
  <div class="card"><div class="label">Objects / fills in flight</div><div class="value" id="objects">–</div></div>
</div>
<h2>Registries</h2>
<table><thead><tr><th>registry</th><th class="num">upstream requests</th><th class="num">errors</th>
<th class="num">from upstream</th><th class="num">from cache</th><th class="num">rate limit left</th></tr></thead>
<tbody id="registries"></tbody></table>
<h2>Upstreams</h2>
<table><thead><tr><th>registry</th><th>upstream</th><th>role</th><th>state</th>
<th class="num">failures in a row</th><th>last error</th></tr></thead>
<tbody id="upstreams"></tbody></table>
<h2>Most pulled images</h2>
<table><thead><tr><th>image</th><th class="num">pulls</th></tr></thead><tbody id="top-images"></tbody></table>
<h2>Recent upstream errors</h2>
<table><thead><tr><th>time</th><th>registry</th><th class="num">status</th><th>message</th></tr></thead>
<tbody id="errors"></tbody></table>
<script>${SCRIPT}</script>
</body>
</html>
`;

/** CSP source for an inline block: its SHA-256, so no other inline script or style can run. */
function hashSource(text: string): string {
  return `'sha256-${createHash("sha256").update(text).digest("base64")}'`;
}

/**
 * The page's Content-Security-Policy: its own inline script and style only, requests to this
 * origin only, and no framing, forms or base URL.
 */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  `script-src ${hashSource(SCRIPT)}`,
  `style-src ${hashSource(STYLE)}`,
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");
