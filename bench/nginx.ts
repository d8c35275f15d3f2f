// nginx for the benchmark: a byte-counting reverse proxy in front of the origin, and static file
// servers (read/write and sendfile) giving the machine's practical limit for serving one file.

import { freePort } from "../tests/fixtures/tools.ts";
import { sleep, spawnLogged, waitHttp } from "./proc.ts";

/** Path of Debian's nginx. */
export const NGINX_BINARY = "/usr/sbin/nginx";

/** One request the counting proxy forwarded, read from its access log. */
export interface ProxiedRequest {
  method: string;
  path: string;
  status: number;
  /** Bytes sent back to the cache: headers and body. */
  bytes: number;
}

/** A running nginx. */
export interface Nginx {
  /** Base URL of the counting proxy to the origin. */
  proxyUrl: string;
  /** Base URL of the static server (read/write, 256 KiB buffers); paths under `dir/static`. */
  staticUrl: string;
  /** The same files served with sendfile(2). */
  sendfileUrl: string;
  pid: number;
  /** Access log position: pass it to `requestsSince` to see what came after. */
  mark(): number;
  /** Requests logged after `mark` (the log is written when each request ends). */
  requestsSince(mark: number): ProxiedRequest[];
  /** Waits until the proxy has no request in progress (all upstream transfers ended). */
  idle(timeoutMs?: number): Promise<void>;
  /**
   * Waits until the proxy has been idle, with nothing new logged, for `quietMs`: a cache that
   * fills in the background (Distribution) may start its upstream request after its client ended.
   */
  settle(quietMs?: number, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

function config(
  dir: string,
  ports: { proxy: number; static: number; sendfile: number },
  upstream: string,
): string {
  return `
daemon off;
master_process off;
worker_processes 1;
user root;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  log_format counting '$request_method $request_uri $status $bytes_sent';
  keepalive_requests 1000000;
  upstream origin {
    server ${upstream};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${ports.proxy};
    access_log ${dir}/proxy.log counting;
    location = /nginx_status { stub_status; access_log off; }
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_buffer_size 1m;
      proxy_buffers 4 1m;
      proxy_busy_buffers_size 2m;
      proxy_read_timeout 300s;
    }
  }
  server {
    listen 127.0.0.1:${ports.static};
    access_log off;
    root ${dir}/static;
    sendfile off;
    output_buffers 2 256k;
    types { }
    default_type application/octet-stream;
  }
  server {
    listen 127.0.0.1:${ports.sendfile};
    access_log off;
    root ${dir}/static;
    sendfile on;
    tcp_nopush on;
    types { }
    default_type application/octet-stream;
  }
}
`;
}

/**
 * Starts nginx with a counting proxy to `upstreamUrl` (`http://127.0.0.1:PORT`) and a static
 * server whose root is `dir/static` (link files there to serve them).
 */
export async function startNginx(dir: string, upstreamUrl: string): Promise<Nginx> {
  await Deno.mkdir(`${dir}/static`, { recursive: true });
  const ports = { proxy: freePort(), static: freePort(), sendfile: freePort() };
  const confPath = `${dir}/nginx.conf`;
  const logPath = `${dir}/proxy.log`;
  await Deno.writeTextFile(logPath, "");
  await Deno.writeTextFile(confPath, config(dir, ports, new URL(upstreamUrl).host));
  const process = spawnLogged(NGINX_BINARY, ["-c", confPath, "-p", dir, "-e", `${dir}/error.log`], {
    logPath: `${dir}/nginx.out`,
  });
  const proxyUrl = `http://127.0.0.1:${ports.proxy}`;
  const statusUrl = `${proxyUrl}/nginx_status`;
  try {
    await waitHttp(statusUrl, { alive: () => !process.exited() });
  } catch (e) {
    await process.stop();
    const errors = await Deno.readTextFile(`${dir}/error.log`).catch(() => "");
    throw new Error(`nginx did not start: ${(e as Error).message}\n${errors}`);
  }
  const writing = async () => {
    const response = await fetch(statusUrl);
    const text = await response.text();
    return Number(/Writing: (\d+)/.exec(text)?.[1] ?? "0");
  };
  const idle = async (timeoutMs = 120_000) => {
    const deadline = Date.now() + timeoutMs;
    // The status request itself is the one request being written.
    while (await writing() > 1) {
      if (Date.now() > deadline) throw new Error("nginx proxy still busy");
      await sleep(100);
    }
  };
  const mark = () => Deno.statSync(logPath).size;
  return {
    proxyUrl,
    staticUrl: `http://127.0.0.1:${ports.static}`,
    sendfileUrl: `http://127.0.0.1:${ports.sendfile}`,
    pid: process.pid,
    mark,
    requestsSince: (mark) => {
      const bytes = Deno.readFileSync(logPath).subarray(mark);
      return new TextDecoder().decode(bytes).split("\n").filter((l) => l !== "").map((line) => {
        const [method, path, status, sent] = line.split(" ");
        return { method, path, status: Number(status), bytes: Number(sent) };
      });
    },
    idle,
    settle: async (quietMs = 1000, timeoutMs = 120_000) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        await idle(timeoutMs);
        const before = mark();
        await sleep(quietMs);
        if (mark() === before && await writing() <= 1) return;
        if (Date.now() > deadline) throw new Error("nginx proxy never settled");
      }
    },
    stop: () => process.stop(),
  };
}
