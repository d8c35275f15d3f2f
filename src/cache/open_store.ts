// Opens the configured store: the S3 bucket when cache.s3 is set, else the cache directory.

import type { Config } from "../config.ts";
import { FsStore } from "./fs_store.ts";
import { S3Store } from "./s3_store.ts";
import type { Store } from "./store.ts";

/** The store cannot be used (a bucket missing, credentials refused): the message says why. */
export class StoreUnavailable extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StoreUnavailable";
  }
}

/**
 * Opens the store `settings` name. With `clean`, what a crash left in the cache directory's tmp/
 * is removed (only the serving process may).
 */
export async function openStore(
  settings: Config["cache"],
  options: { clean: boolean },
): Promise<Store> {
  if (!settings.s3) return await FsStore.open(settings.dir, options);
  try {
    return await S3Store.open({ dir: settings.dir, s3: settings.s3 }, options);
  } catch (e) {
    throw new StoreUnavailable((e as Error).message, { cause: e });
  }
}
