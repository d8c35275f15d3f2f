// Listing a bucket by prefix (ListObjectsV2, a page of up to 1000 keys at a time), and reading
// many small objects with a bounded number of requests in flight.

import { type S3Client, xmlValues } from "./client.ts";

/** One listed object. */
export interface Listed {
  key: string;
  size: number;
  lastModifiedMs: number;
}

/** Every object whose key starts with `prefix`, page by page. */
export async function* listObjects(client: S3Client, prefix: string): AsyncIterable<Listed> {
  let token: string | undefined;
  do {
    const query: Record<string, string> = { "list-type": "2", prefix, "max-keys": "1000" };
    if (token !== undefined) query["continuation-token"] = token;
    const xml = await (await client.send("ListObjectsV2", "GET", "", { query })).text();
    for (const contents of xml.split("<Contents>").slice(1)) {
      const [key] = xmlValues(contents, "Key");
      const [size] = xmlValues(contents, "Size");
      const [modified] = xmlValues(contents, "LastModified");
      if (key === undefined) continue;
      yield { key, size: Number(size), lastModifiedMs: Date.parse(modified ?? "") || 0 };
    }
    token = xmlValues(xml, "IsTruncated")[0] === "true"
      ? xmlValues(xml, "NextContinuationToken")[0]
      : undefined;
  } while (token !== undefined);
}

/** `fn` applied to every item, at most `limit` at once; results in the order of `items`. */
export async function mapLimit<T, R>(
  items: T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const at = next++;
      results[at] = await fn(items[at]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
