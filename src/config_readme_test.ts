// Checks that README.md's configuration tables and the config schema name the same keys.

import { deepEqual } from "node:assert/strict";
import { ConfigFileSchema } from "./config.ts";

/** A schema node, as far as walking its keys needs. */
interface Node {
  type: string;
  pipe?: Node[];
  wrapped?: Node;
  getter?: (input: unknown) => Node;
  entries?: Record<string, Node>;
  value?: Node;
}

/** The object or record inside optional, lazy and pipe wrappers; any other node as is. */
function unwrap(node: Node): Node {
  if (node.wrapped) return unwrap(node.wrapped);
  if (node.getter) return unwrap(node.getter({}));
  const isContainer = (n: Node) => n.type === "strict_object" || n.type === "record";
  if (isContainer(node) && !node.pipe) return node;
  const inner = node.pipe?.filter((n) => n !== node).map(unwrap).find(isContainer);
  return inner ?? node;
}

/** Documented key paths: leaves, and records of objects as `<name>` plus their keys. */
export function schemaKeys(schema: Node, prefix = ""): string[] {
  const node = unwrap(schema);
  if (node.type === "strict_object") {
    return Object.entries(node.entries!).flatMap(([key, child]) => {
      const inner = unwrap(child);
      const path = prefix + key;
      return inner.type === "strict_object" || inner.type === "record"
        ? schemaKeys(inner, `${path}.`)
        : [path];
    });
  }
  if (node.type === "record") {
    const path = `${prefix}<name>`;
    const value = unwrap(node.value!);
    if (value.type === "strict_object") return [path, ...schemaKeys(value, `${path}.`)];
    return [prefix.slice(0, -1)];
  }
  return [prefix.slice(0, -1)];
}

/** Keys in the first column of the README tables headed `| key |`. */
export function readmeKeys(markdown: string): string[] {
  const keys: string[] = [];
  let inTable = false;
  for (const line of markdown.split("\n")) {
    if (/^\|\s*key\s*\|/.test(line)) inTable = true;
    else if (!line.startsWith("|")) inTable = false;
    if (!inTable || !line.startsWith("| `")) continue;
    // `a.b.c`, `d` / `e`: a name without a dot sits beside the previous key.
    let parent = "";
    for (const [, key] of line.split("|")[1].matchAll(/`([^`]+)`/g)) {
      const path = key.includes(".") || parent === "" ? key : parent + key;
      parent = path.slice(0, path.lastIndexOf(".") + 1);
      keys.push(path);
    }
  }
  return keys;
}

const sorted = (keys: string[]) => [...new Set(keys)].sort();

Deno.test("config readme: the walk finds nested, record and leaf keys", () => {
  deepEqual(
    readmeKeys("| key | x |\n| --- | - |\n| `a.b`, `c` / `d.e` | x |\n\n| `not.a.key` | y |\n"),
    ["a.b", "a.c", "d.e"],
  );
  const keys = schemaKeys(ConfigFileSchema as unknown as Node);
  deepEqual(
    ["listen", "hosts", "registries.<name>", "registries.<name>.upstream", "limits.maxConnections"]
      .filter((k) => !keys.includes(k)),
    [],
  );
});

Deno.test("config readme: every schema key is documented and every documented key exists", () => {
  const readme = Deno.readTextFileSync(new URL("../README.md", import.meta.url));
  const documented = sorted(readmeKeys(readme));
  const schema = sorted(schemaKeys(ConfigFileSchema as unknown as Node));
  deepEqual(
    { undocumented: schema.filter((k) => !documented.includes(k)) },
    { undocumented: [] },
  );
  deepEqual({ unknown: documented.filter((k) => !schema.includes(k)) }, { unknown: [] });
});
