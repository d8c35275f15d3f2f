import { equal } from "node:assert/strict";
import {
  accepts,
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
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

Deno.test("accepts: q-values are honoured; q=0 refuses a type, also one a wildcard takes", () => {
  equal(accepts(`${OCI_MANIFEST};q=0`, OCI_MANIFEST), false);
  equal(accepts(`${OCI_MANIFEST}; q=0.0`, OCI_MANIFEST), false);
  equal(accepts(`${OCI_INDEX};q=0, */*`, OCI_INDEX), false, "the specific range wins");
  equal(accepts(`${OCI_INDEX};q=0, */*`, OCI_MANIFEST), true);
  equal(accepts("*/*;q=0", OCI_MANIFEST), false);
  equal(accepts("application/*;q=0.1", OCI_INDEX), true);
  equal(accepts("application/*", DOCKER_MANIFEST), true);
  equal(accepts("text/*", DOCKER_MANIFEST), false);
  equal(accepts(OCI_MANIFEST.toUpperCase(), OCI_MANIFEST), true, "types are case-insensitive");
  equal(accepts(" , ", OCI_MANIFEST), true, "a blank Accept takes anything");
  equal(accepts("garbage", OCI_MANIFEST), false);
});

Deno.test("manifestAccept: a wildcard adds only the modern types the client does not refuse", () => {
  equal(
    manifestAccept(`${OCI_INDEX};q=0, */*`),
    [`${OCI_INDEX};q=0`, "*/*", OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST].join(", "),
  );
  equal(manifestAccept("*/*;q=0, " + DOCKER_MANIFEST), `*/*;q=0, ${DOCKER_MANIFEST}`);
  equal(
    manifestAccept(`${DOCKER_MANIFEST};q=0.5, application/*`),
    [`${DOCKER_MANIFEST};q=0.5`, "application/*", OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST]
      .join(", "),
    "a type named with a q-value is not added again",
  );
});
