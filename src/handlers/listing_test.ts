import { deepEqual, equal } from "node:assert/strict";
import { parseTagList, rewriteLink, tagsPage } from "./listing.ts";

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

const LIST = { name: "library/app", tags: ["v3", "10", "v1", "latest", "v2", "1"] };
const ROUTE = { name: "library/app", clientPath: "/v2/app" };

/** [case, n, last, upstream Link, expected tags, expected Link] */
const PAGES: [string, number, string | undefined, string | undefined, string[], string?][] = [
  ["n=0: an empty list, no Link (spec: MUST)", 0, undefined, undefined, []],
  [
    "n=0 drops the upstream Link of the one tag asked for",
    0,
    undefined,
    '</v2/library/app/tags/list?n=1&last=1>; rel="next"',
    [],
  ],
  [
    "a list that ignored n is paged ASCIIbetically, with a Link to the next page",
    2,
    undefined,
    undefined,
    ["1", "10"],
    '</v2/app/tags/list?n=2&last=10>; rel="next"',
  ],
  [
    "the next page starts after last",
    2,
    "10",
    undefined,
    ["latest", "v1"],
    '</v2/app/tags/list?n=2&last=v1>; rel="next"',
  ],
  ["the last page has no Link", 2, "v1", undefined, ["v2", "v3"]],
  ["n larger than the list: all of it, no Link", 7, undefined, undefined, LIST.tags],
  [
    "an upstream page within n is kept, its Link rewritten for the client",
    6,
    undefined,
    '</v2/library/app/tags/list?n=6&last=v3>; rel="next"',
    LIST.tags,
    '</v2/app/tags/list?n=6&last=v3>; rel="next"',
  ],
];

Deno.test("tagsPage: the page a client asking for n tags after last receives", () => {
  for (const [what, n, last, link, tags, next] of PAGES) {
    const page = tagsPage(LIST, { ...ROUTE, n, last, link });
    deepEqual([page.body, page.link], [{ name: "library/app", tags }, next], what);
  }
  const ns = tagsPage(LIST, { ...ROUTE, n: 1, ns: "docker.io" });
  equal(ns.link, '</v2/app/tags/list?n=1&last=1&ns=docker.io>; rel="next"');
});

Deno.test("parseTagList: Distribution's null tags, a missing name; anything else is refused", () => {
  const bytes = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
  deepEqual(parseTagList(bytes({ name: "a/b", tags: null }), "x"), { name: "a/b", tags: [] });
  deepEqual(parseTagList(bytes({ tags: ["1"] }), "x"), { name: "x", tags: ["1"] });
  equal(parseTagList(bytes({ name: "a/b", tags: [1] }), "x"), undefined);
  equal(parseTagList(bytes({ name: "a/b", tags: "1" }), "x"), undefined);
  equal(parseTagList(new TextEncoder().encode("<html>"), "x"), undefined);
  equal(parseTagList(undefined, "x"), undefined);
});
