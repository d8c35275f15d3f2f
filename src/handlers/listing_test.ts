import { equal } from "node:assert/strict";
import { rewriteLink } from "./listing.ts";

Deno.test("rewriteLink: upstream pagination links follow the client's routing form", () => {
  const link = '</v2/prometheus/prometheus/tags/list?last=v2&n=2>; rel="next"';
  equal(
    rewriteLink(link, "prometheus/prometheus", "/v2/quay.io/prometheus/prometheus"),
    '</v2/quay.io/prometheus/prometheus/tags/list?last=v2&n=2>; rel="next"',
  );
  equal(
    rewriteLink(link, "prometheus/prometheus", "/quay/v2/prometheus/prometheus", "quay.io"),
    '</quay/v2/prometheus/prometheus/tags/list?last=v2&n=2&ns=quay.io>; rel="next"',
  );
  equal(
    rewriteLink(
      '<https://registry-1.docker.io/v2/library/ubuntu/tags/list?last=a&n=1>; rel="next"',
      "library/ubuntu",
      "/v2/ubuntu",
    ),
    '</v2/ubuntu/tags/list?last=a&n=1>; rel="next"',
  );
});
