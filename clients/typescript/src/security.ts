/**
 * How a client or a device daemon reaches a server: TLS, a client
 * certificate, a bearer token — the TypeScript twin of orion_grpc/transport.py.
 *
 * With no setting at all the connection is plaintext HTTP/2 and sends no
 * token: what a server on loopback without authentication (the default)
 * expects. `ca` (or `tls`, trusting Node's default CAs) turns TLS on; `cert` +
 * `key` add a client certificate (mutual TLS); `token` travels as
 * `authorization: Bearer <token>` metadata on every call.
 */
import { readFileSync } from "node:fs";

import type { Interceptor, Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

export interface SecurityOptions {
  /** PEM file of the CA that signed the server's certificate (TLS on). */
  ca?: string;
  /** This side's certificate and key (PEM files), for mutual TLS (TLS on). */
  cert?: string;
  key?: string;
  /** TLS with Node's trusted roots (a server with a public certificate). */
  tls?: boolean;
  /** The name the server's certificate must carry, if not the host dialled. */
  serverName?: string;
  /** Bearer token sent with every call. */
  token?: string;
}

function read(path: string, flag: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === "ENOENT" ? "No such file or directory" : String(err);
    throw new Error(`${flag} ${path}: ${why}`);
  }
}

/** Throws (naming the flag) if the options do not go together or a file cannot be read. */
export function checkSecurity(security: SecurityOptions): void {
  if (Boolean(security.cert) !== Boolean(security.key)) {
    throw new Error("a client certificate needs its key: give both --cert and --key");
  }
  if (security.ca) read(security.ca, "--ca");
  if (security.cert) read(security.cert, "--cert");
  if (security.key) read(security.key, "--key");
}

export function isSecure(security: SecurityOptions): boolean {
  return Boolean(security.tls || security.ca || security.cert);
}

/** Adds `authorization: Bearer <token>` to every request. */
export function tokenInterceptor(token: string): Interceptor {
  return (next) => (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
}

/**
 * A gRPC transport to `target` ("host:port") and the HTTP/2 session manager
 * under it (abort it to close the connection).
 */
export function createOrionTransport(
  target: string,
  security: SecurityOptions = {},
  pingOptions: { pingIntervalMs?: number; pingTimeoutMs?: number } = {},
): { transport: Transport; sessionManager: Http2SessionManager } {
  checkSecurity(security);
  const secure = isSecure(security);
  const baseUrl = `${secure ? "https" : "http"}://${target}`;
  const tlsOptions = secure
    ? {
        ca: security.ca ? read(security.ca, "--ca") : undefined,
        cert: security.cert ? read(security.cert, "--cert") : undefined,
        key: security.key ? read(security.key, "--key") : undefined,
        servername: security.serverName || undefined,
      }
    : {};
  const sessionManager = new Http2SessionManager(baseUrl, pingOptions, tlsOptions);
  const interceptors = security.token ? [tokenInterceptor(security.token)] : [];
  return { transport: createGrpcTransport({ baseUrl, sessionManager, interceptors }), sessionManager };
}

/** The options of the command-line examples (parseArgs), with their environment fallbacks. */
export function securityArgs(tokenEnv: "ORION_TOKEN" | "ORION_DEVICE_TOKEN") {
  const env = process.env;
  return {
    ca: { type: "string", default: env.ORION_CA ?? "" },
    cert: { type: "string", default: env.ORION_CERT ?? "" },
    key: { type: "string", default: env.ORION_KEY ?? "" },
    tls: { type: "boolean", default: ["1", "true"].includes(env.ORION_TLS ?? "") },
    "server-name": { type: "string", default: env.ORION_SERVER_NAME ?? "" },
    token: { type: "string", default: env[tokenEnv] ?? "" },
  } as const;
}

/** SecurityOptions from the values parsed with securityArgs(). */
export function securityFromArgs(values: {
  ca?: string;
  cert?: string;
  key?: string;
  tls?: boolean;
  "server-name"?: string;
  token?: string;
}): SecurityOptions {
  return {
    ca: values.ca || undefined,
    cert: values.cert || undefined,
    key: values.key || undefined,
    tls: values.tls ?? false,
    serverName: values["server-name"] || undefined,
    token: values.token || undefined,
  };
}

export const SECURITY_USAGE = "[--ca PEM] [--cert PEM --key PEM] [--tls] [--server-name NAME] [--token T]";
