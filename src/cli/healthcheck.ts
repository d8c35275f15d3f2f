// `registry-mirror healthcheck`: asks the local mirror's /healthz, over HTTPS when it serves TLS.

import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import type { Config } from "../config.ts";

/** Where the mirror this config describes answers: a wildcard address is reached over loopback. */
export function healthTarget(config: Config): { url: string; hostname: string; port: number } {
  const { hostname: listen, port } = config.listen;
  const hostname = listen === "0.0.0.0" ? "127.0.0.1" : listen === "::" ? "::1" : listen;
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  return { url: `${config.tls ? "https" : "http"}://${host}:${port}/healthz`, hostname, port };
}

/**
 * The status of `GET /healthz` (public: no credentials are needed or sent with `auth` on).
 *
 * With `tls`, the certificate is not verified. It may be self-signed (rustls then refuses it as a
 * CA used as an end entity) or issued for a public name by a CA not in the file, and we connect to
 * an address: no verification setting fits every valid deployment. That is safe here: the request
 * carries no credentials and its answer is only a status, so a party able to intercept a loopback
 * connection inside the container can at most report a wrong liveness, which it could also do by
 * taking the port.
 */
export function probeHealth(config: Config, timeoutMs = 5000): Promise<number> {
  const { hostname, port } = healthTarget(config);
  const request = config.tls ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request({
      hostname,
      port,
      path: "/healthz",
      method: "GET",
      agent: false,
      rejectUnauthorized: false,
      signal: AbortSignal.timeout(timeoutMs),
    }, (response) => {
      response.resume();
      response.on("end", () => resolve(response.statusCode ?? 0));
      response.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}
