import { equal } from "node:assert/strict";
import {
  DEFAULT_CAP,
  defaultMaxConnections,
  maxConnectionsForThisProcess,
  probeFreeDescriptors,
} from "./descriptors.ts";

/** An opener that fails like the kernel once `limit` are open. */
function fakeLimit(limit: number, message = "Too many open files (os error 24)") {
  let open = 0;
  let peak = 0;
  return {
    open: () => {
      if (open >= limit) throw new Error(message);
      peak = Math.max(peak, ++open);
      return { [Symbol.dispose]: () => void open-- };
    },
    get count() {
      return open;
    },
    get peak() {
      return peak;
    },
  };
}

Deno.test("descriptors: the probe counts up to the limit and closes what it opened", () => {
  const low = fakeLimit(229);
  equal(probeFreeDescriptors(5000, low.open), 229);
  equal(low.count, 0, "all closed again");
  const high = fakeLimit(1_000_000);
  equal(probeFreeDescriptors(100, high.open), undefined, "no limit below 100");
  equal(high.peak, 100, "stops at upTo");
  equal(high.count, 0);
  const system = fakeLimit(10, "Too many open files in system (os error 23)");
  equal(probeFreeDescriptors(100, system.open), 10);
  equal(probeFreeDescriptors(100, fakeLimit(0, "NotCapable: no read access").open), undefined);
});

Deno.test("descriptors: the default connection cap stays below the descriptor limit", () => {
  equal(defaultMaxConnections(1024 - 27), 466);
  equal(defaultMaxConnections(5000), DEFAULT_CAP);
  equal(defaultMaxConnections(256 - 27), 82);
  equal(defaultMaxConnections(64), 16);
  equal(defaultMaxConnections(undefined), DEFAULT_CAP);
  equal(defaultMaxConnections(1_000_000), DEFAULT_CAP);
});

Deno.test("descriptors: this process, probed for real", () => {
  const { max, free } = maxConnectionsForThisProcess();
  equal(max, defaultMaxConnections(free));
  equal(max >= 16 && max <= DEFAULT_CAP, true);
});
