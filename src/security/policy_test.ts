import { equal, match } from "node:assert/strict";
import { Policy } from "./policy.ts";

Deno.test("policy: allow and deny patterns, deny first, * is one component and ** any", () => {
  const policy = new Policy({
    allow: ["docker.io/library/*", "ghcr.io/my-org/**", "*/public/*"],
    deny: ["docker.io/library/evil", "ghcr.io/my-org/secret/**"],
  });
  const allowed = [
    ["docker.io", "library/ubuntu"],
    ["ghcr.io", "my-org/app"],
    ["ghcr.io", "my-org/team/app"],
    ["quay.io", "public/x"],
  ];
  for (const [registry, name] of allowed) equal(policy.check(registry, name), undefined, name);
  const denied: [string, string, RegExp][] = [
    ["docker.io", "library/evil", /denied by rule "deny: docker\.io\/library\/evil"/],
    ["ghcr.io", "my-org/secret/key", /denied by rule "deny: ghcr\.io\/my-org\/secret\/\*\*"/],
    ["docker.io", "bitnami/redis", /no allow rule matches/],
    ["docker.io", "library/ubuntu/sub", /no allow rule matches/],
    ["ghcr.io", "my-orgx/app", /no allow rule matches/],
  ];
  for (const [registry, name, message] of denied) {
    const e = policy.check(registry, name);
    equal(e?.status, 403, name);
    equal(e?.code, "DENIED");
    match(e!.message, message);
  }
  equal(new Policy({ allow: [], deny: [] }).check("docker.io", "anything/at/all"), undefined);
});
