import { equal } from "node:assert/strict";
import { manifestAccept, MODERN_MANIFEST_TYPES } from "./media_types.ts";

Deno.test("manifestAccept: union of repeated Accept lines, deduplicated; full list when none or a wildcard", () => {
  const joined = new Headers([
    ["accept", "application/vnd.oci.image.manifest.v1+json"],
    ["accept", "application/vnd.docker.distribution.manifest.v2+json, */*"],
    ["accept", "application/vnd.oci.image.manifest.v1+json"],
  ]).get("accept");
  equal(
    manifestAccept(joined),
    [
      "application/vnd.oci.image.manifest.v1+json",
      "application/vnd.docker.distribution.manifest.v2+json",
      "*/*",
      "application/vnd.oci.image.index.v1+json",
      "application/vnd.docker.distribution.manifest.list.v2+json",
    ].join(", "),
  );
  equal(
    manifestAccept("application/vnd.docker.distribution.manifest.v2+json"),
    "application/vnd.docker.distribution.manifest.v2+json",
  );
  equal(manifestAccept(null), MODERN_MANIFEST_TYPES.join(", "));
  equal(manifestAccept(" , "), MODERN_MANIFEST_TYPES.join(", "));
});
