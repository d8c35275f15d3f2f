// The small pass-through endpoints: GET /v2/ (the ping), tags list and referrers.

import { readLimited } from "../body.ts";
import { RegistryError } from "../oci/errors.ts";
import type { Route } from "../route.ts";
import { upstreamError, type Wanted } from "../upstream/errors.ts";
import {
  askUpstream,
  forwardedHeaders,
  type HandlerContext,
  pullScope,
  registryHeaders,
  viaHeader,
} from "./context.ts";

type TagsRoute = Extract<Route, { kind: "tags" }>;

/** Largest upstream tag list read when a page size is asked for (the whole list, if not paged). */
const MAX_TAG_LIST_BYTES = 16 * 1024 * 1024;

/** `GET /v2/`: the mirror answers itself; no upstream is asked. */
export function handleBase(request: Request): Response {
  const headers = registryHeaders({ "content-type": "application/json" });
  return new Response(request.method === "HEAD" ? null : "{}", { headers });
}

/**
 * `GET /v2/<name>/tags/list`: passed through, with the pagination `Link` rewritten for the client.
 * With `n`, the page is checked against the spec: `n=0` is an empty list without `Link`, and a
 * list longer than `n` (an upstream that ignores `n`, as Distribution 2.x does) is paged here.
 * Tags cannot be verified: during an outage only fallbacks with `trustTags` are asked.
 */
export async function handleTags(
  route: TagsRoute,
  request: Request,
  ctx: HandlerContext,
): Promise<Response> {
  const query = new URLSearchParams();
  // For n=0 one tag is asked for (some registries refuse n=0): the answer's status still says
  // whether the repository exists and may be read.
  if (route.n !== undefined) query.set("n", String(Math.max(route.n, 1)));
  if (route.last !== undefined) query.set("last", route.last);
  const response = await askUpstream(ctx, route.registry, {
    method: request.method === "HEAD" ? "HEAD" : "GET",
    path: `/v2/${route.name}/tags/list`,
    query,
    headers: forwardedHeaders(request),
    scope: pullScope(route.name),
    trust: "tag",
  }, (answer) => success(answer.response, route.registry, "repository"));
  const link = response.headers.get("link") ?? undefined;
  if (route.n === undefined || request.method === "HEAD") {
    const headers = passHeaders(ctx, response, ["content-length"], "application/json");
    if (link && route.n !== 0) headers.set("link", clientLink(link, route));
    return new Response(response.body, { headers });
  }
  const list = parseTagList(await readLimited(response.body, MAX_TAG_LIST_BYTES), route.name);
  if (!list) {
    throw new RegistryError(
      "UNAVAILABLE",
      `upstream ${route.registry} sent an invalid or oversized tag list`,
      { status: 502 },
    );
  }
  const page = tagsPage(list, { ...route, n: route.n, link });
  const headers = viaHeader(ctx, registryHeaders({ "content-type": "application/json" }));
  if (page.link) headers.set("link", page.link);
  return new Response(JSON.stringify(page.body), { headers });
}

/** A tags list body: `{"name": "<name>", "tags": [...]}`. */
export interface TagList {
  name: string;
  tags: string[];
}

/**
 * The page a client asking for `n` tags after `last` gets from the upstream's answer `list`
 * (whose `Link` is `link`). `n=0`: an empty list and no `Link`. An upstream page of at most `n`
 * tags is kept with its `Link`. A longer one is a list the upstream did not page: it is paged
 * here in ASCIIbetical order, with a `Link` to the next page while tags remain.
 */
export function tagsPage(
  list: TagList,
  page: Pick<TagsRoute, "name" | "last" | "clientPath" | "ns"> & { n: number; link?: string },
): { body: TagList; link?: string } {
  const { n, last } = page;
  if (n === 0) return { body: { name: list.name, tags: [] } };
  if (list.tags.length <= n) {
    return {
      body: list,
      link: page.link === undefined ? undefined : clientLink(page.link, page),
    };
  }
  const after = list.tags.filter((tag) => last === undefined || tag > last).sort();
  const tags = after.slice(0, n);
  if (after.length <= n) return { body: { name: list.name, tags } };
  const query = new URLSearchParams({ n: String(n), last: tags[n - 1] });
  if (page.ns !== undefined) query.set("ns", page.ns);
  return {
    body: { name: list.name, tags },
    link: `<${page.clientPath}/tags/list?${query}>; rel="next"`,
  };
}

/** The upstream's tags list (named `name` if it says no name), or undefined if not one. */
export function parseTagList(bytes: Uint8Array | undefined, name: string): TagList | undefined {
  if (bytes === undefined) return undefined;
  try {
    const body = JSON.parse(new TextDecoder().decode(bytes));
    // Distribution answers `"tags": null` for a repository without tags.
    const tags: unknown = body?.tags ?? [];
    if (!Array.isArray(tags) || !tags.every((tag) => typeof tag === "string")) return undefined;
    return { name: typeof body.name === "string" ? body.name : name, tags };
  } catch {
    return undefined;
  }
}

function clientLink(link: string, route: Pick<TagsRoute, "name" | "clientPath" | "ns">): string {
  return rewriteLink(link, route.name, route.clientPath, route.ns);
}

/** What a referrers list is (OCI distribution-spec), whatever the upstream calls it. */
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";

/** `GET /v2/<name>/referrers/<digest>`: passed through (a 404 tells clients to use tag schema). */
export async function handleReferrers(
  route: Extract<Route, { kind: "referrers" }>,
  request: Request,
  ctx: HandlerContext,
): Promise<Response> {
  const query = new URLSearchParams();
  if (route.artifactType) query.set("artifactType", route.artifactType);
  // A referrers list names signatures and attestations: like a tag, it cannot be verified.
  const response = await askUpstream(ctx, route.registry, {
    method: request.method === "HEAD" ? "HEAD" : "GET",
    path: `/v2/${route.name}/referrers/${route.digest}`,
    query,
    headers: { ...forwardedHeaders(request), accept: OCI_INDEX },
    scope: pullScope(route.name),
    trust: "tag",
  }, (answer) => success(answer.response, route.registry, "manifest"));
  const names = ["content-length", "oci-filters-applied"];
  return new Response(response.body, { headers: passHeaders(ctx, response, names, OCI_INDEX) });
}

/** The upstream's 200, or the error its answer maps to. */
async function success(response: Response, registry: string, wanted: Wanted): Promise<Response> {
  if (response.status !== 200) throw await upstreamError(response, registry, wanted);
  return response;
}

/**
 * The response headers: `names` copied from upstream, and our own Content-Type: an upstream's would
 * be served from the mirror's origin (the dashboard's, holding the browser's credentials).
 */
function passHeaders(
  ctx: HandlerContext,
  response: Response,
  names: string[],
  contentType: string,
): Headers {
  const headers = viaHeader(ctx, registryHeaders({ "content-type": contentType }));
  for (const name of names) {
    const value = response.headers.get(name);
    if (value !== null) headers.set(name, value);
  }
  return headers;
}

/**
 * Rewrites an upstream `Link: </v2/<name>/tags/list?last=x&n=2>; rel="next"` to the path the
 * client used (`/v2/quay.io/<name>/...`, `/quay/v2/<name>/...`), keeping `ns` for containerd.
 */
export function rewriteLink(link: string, name: string, clientPath: string, ns?: string): string {
  return link.replace(/<([^>]*)>/, (_, target: string) => {
    const url = new URL(target, "http://upstream.invalid");
    const prefix = `/v2/${name}/`;
    const rest = url.pathname.startsWith(prefix) ? url.pathname.slice(prefix.length) : "tags/list";
    if (ns !== undefined) url.searchParams.set("ns", ns);
    return `<${clientPath}/${rest}${url.search}>`;
  });
}
