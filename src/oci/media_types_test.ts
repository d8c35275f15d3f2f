import { equal } from "node:assert/strict";
import {
  accepts,
  manifestAccept,
  MODERN_MANIFEST_TYPES,
  OCI_INDEX,
  OCI_MANIFEST,
} from "./media_types.ts";

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

Deno.test("accepts: a cached manifest is served only to clients that take its type", () => {
  equal(accepts(null, OCI_INDEX), true);
  equal(accepts(`${OCI_MANIFEST}, */*`, OCI_INDEX), true);
  equal(accepts(`${OCI_MANIFEST};q=0.9`, OCI_MANIFEST), true);
  equal(accepts(OCI_MANIFEST, OCI_INDEX), false);
});
