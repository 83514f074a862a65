#!/usr/bin/env node
/**
 * The example device daemon in TypeScript:
 *
 *   node dist/bin/device-daemon.js --id ts-01 --type linux --capabilities node \
 *       [--server H:P] [--capacity N] [--executor sleep] [--drain-timeout S]
 *       [--ca ca.pem] [--cert ts-01.pem --key ts-01.key] [--token T]
 *
 * Connects over DeviceService.Connect, registers, runs the stars it is sent
 * with the built-in executors (echo, sleep) and returns their results. Prints
 * `device ID connected to H:P (session S)` on stdout each time a session is
 * welcomed; logs go to stderr. SIGINT/SIGTERM drain and stop gracefully (a
 * second signal stops at once). Exit status: 0 after a graceful stop, 3 when
 * the server refused the device or another session took over its id, 2 on bad
 * arguments. Same options and output as `orion device`: TLS with `--ca` (or
 * `--tls`), a client certificate for mutual TLS with `--cert`/`--key`, a device
 * token with `--token` or ORION_DEVICE_TOKEN (ORION_CA, ORION_CERT, ORION_KEY,
 * ORION_TLS and ORION_SERVER_NAME likewise).
 */
import * as os from "node:os";
import { parseArgs } from "node:util";

import { DeviceDaemon, DeviceStoppedError, parseDeviceType } from "../device.js";
import { defaultExecutors } from "../executors.js";
import { SECURITY_USAGE, securityArgs, securityFromArgs } from "../security.js";

const USAGE = `usage: device-daemon [--server H:P] [--id ID] [--type linux|windows|macos|android|ios|web|api]
                     [--capabilities a,b] [--capacity N] [--executor NAME] [--drain-timeout S]
                     [--backoff-max S] [--no-progress]
                     ${SECURITY_USAGE}`;

function main(): Promise<number> | number {
  let daemon: DeviceDaemon;
  let drainTimeoutMs: number;
  try {
    const { values } = parseArgs({
      options: {
        server: { type: "string", default: process.env.ORION_SERVER || "127.0.0.1:50051" },
        id: { type: "string", default: os.hostname() },
        type: { type: "string", default: os.platform() === "win32" ? "windows" : os.platform() === "darwin" ? "macos" : "linux" },
        capabilities: { type: "string", default: "" },
        capacity: { type: "string", default: "1" },
        executor: { type: "string" },
        "drain-timeout": { type: "string", default: "30" },
        "backoff-max": { type: "string", default: "30" },
        "no-progress": { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
        ...securityArgs("ORION_DEVICE_TOKEN"),
      },
      strict: true,
    });
    if (values.help) {
      console.log(USAGE);
      return 0;
    }
    const capacity = Number(values.capacity);
    drainTimeoutMs = Number(values["drain-timeout"]) * 1000;
    const backoffMaxMs = Number(values["backoff-max"]) * 1000;
    if (!Number.isInteger(capacity) || capacity < 1) throw new Error(`--capacity must be a positive integer, got ${values.capacity}`);
    if (!(drainTimeoutMs >= 0) || !(backoffMaxMs >= 0)) throw new Error("--drain-timeout and --backoff-max are seconds >= 0");
    daemon = new DeviceDaemon({
      server: values.server!,
      security: securityFromArgs(values),
      deviceId: values.id!,
      deviceType: parseDeviceType(values.type!),
      capabilities: values.capabilities!.split(",").map((c) => c.trim()).filter((c) => c),
      capacity,
      executors: defaultExecutors(),
      defaultExecutor: values.executor,
      sendProgress: !values["no-progress"],
      backoffMaxMs,
      onConnected: (session) => console.log(`device ${values.id} connected to ${values.server} (session ${session})`),
    });
  } catch (err) {
    console.error(`error: ${err instanceof Error ? err.message : String(err)}\n${USAGE}`);
    return 2;
  }
  return serve(daemon, drainTimeoutMs);
}

async function serve(daemon: DeviceDaemon, drainTimeoutMs: number): Promise<number> {
  const running = daemon.start();
  let stopping = false;
  const onSignal = () => {
    if (stopping) process.exit(130); // second signal: stop now
    stopping = true;
    console.error(`device ${daemon.deviceId}: stopping (draining, up to ${drainTimeoutMs / 1000}s)`);
    void daemon.stop(drainTimeoutMs);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    await running;
    return 0;
  } catch (err) {
    console.error(`error: ${err instanceof Error ? err.message : String(err)}`);
    return err instanceof DeviceStoppedError ? 3 : 1;
  }
}

void Promise.resolve(main()).then((code) => process.exit(code));
