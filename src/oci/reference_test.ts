import { deepEqual } from "node:assert/strict";
import { parseImageReference } from "./reference.ts";

Deno.test("parseImageReference: the forms people write", () => {
  const D = "sha256:" + "b".repeat(64);
  const cases: [string, ReturnType<typeof parseImageReference>][] = [
    ["ubuntu", { registry: "docker.io", name: "library/ubuntu", reference: "latest" }],
    ["ubuntu:22.04", { registry: "docker.io", name: "library/ubuntu", reference: "22.04" }],
    ["docker/compose:v2", { registry: "docker.io", name: "docker/compose", reference: "v2" }],
    ["docker.io/alpine", { registry: "docker.io", name: "library/alpine", reference: "latest" }],
    ["quay.io/prometheus/prometheus:v2", {
      registry: "quay.io",
      name: "prometheus/prometheus",
      reference: "v2",
    }],
    ["registry.k8s.io/pause:3.9", { registry: "registry.k8s.io", name: "pause", reference: "3.9" }],
    [`ghcr.io/org/app@${D}`, { registry: "ghcr.io", name: "org/app", reference: D }],
    [`ghcr.io/org/app:1@${D}`, { registry: "ghcr.io", name: "org/app", reference: D }],
    ["localhost:5000/a/b", { registry: "localhost:5000", name: "a/b", reference: "latest" }],
    ["Ubuntu", 'invalid repository name "library/Ubuntu" in "Ubuntu"'],
    ["ubuntu:-x", 'invalid tag "-x" in "ubuntu:-x"'],
    ["ubuntu@sha256:abc", 'invalid digest "sha256:abc" in "ubuntu@sha256:abc"'],
  ];
  for (const [text, expected] of cases) deepEqual(parseImageReference(text), expected, text);
});
