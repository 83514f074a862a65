/**
 * A device daemon in TypeScript: one DeviceService.Connect stream per session,
 * as described in docs/protocol.md. It registers (hello), heartbeats, acks and
 * runs assignments with pluggable executors (or rejects them), reports
 * progress, keeps each result until the server acknowledges it (replaying the
 * unacknowledged ones in the next hello), obeys cancel and goodbye, reconnects
 * with exponential backoff and full jitter, and drains on stop().
 */
import * as os from "node:os";

import { create, fromJson, type JsonObject, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";
import { ValueSchema, timestampDate, timestampFromMs, timestampNow, type Duration } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";

import {
  type ConnectRequest,
  ConnectRequestSchema,
  type ConnectResponse,
  type DeviceHello,
  DeviceHelloSchema,
  DeviceService,
  type ServerGoodbye,
  type TaskAssignment,
  type TaskResult,
  TaskResultSchema,
} from "./gen/orion/v1/device_service_pb.js";
import { DeviceType } from "./gen/orion/v1/task_star_pb.js";
import { type Assignment, type Executor, ExecutorError, defaultExecutors } from "./executors.js";
import { MessageQueue } from "./queue.js";
import { type SecurityOptions, checkSecurity, createOrionTransport } from "./security.js";

export const DAEMON_VERSION = "0.1.0-ts";

/** Statuses a retry cannot fix: the server refused this daemon's hello or protocol. */
const FATAL_CODES = new Set([
  Code.InvalidArgument,
  Code.FailedPrecondition,
  Code.Unimplemented,
  Code.Unauthenticated,
  Code.PermissionDenied,
]);

/** The daemon stopped for a reason reconnecting cannot fix (`reason` says which). */
export class DeviceStoppedError extends Error {
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
    this.name = "DeviceStoppedError";
  }
}

export interface DeviceOptions {
  /** The server, "host:port". */
  server: string;
  /** TLS, a client certificate (mutual TLS: names the device) and a device token (default: plaintext, none). */
  security?: SecurityOptions;
  deviceId: string;
  deviceType: DeviceType;
  capabilities?: string[];
  /** Most stars run at once (default 1). */
  capacity?: number;
  /** Executors by name (default: echo and sleep). */
  executors?: Map<string, Executor>;
  /** For stars whose task_data names no executor (default "echo"). */
  defaultExecutor?: string;
  /** Stream executors' progress reports (default true). */
  sendProgress?: boolean;
  /** Reconnect backoff: the n-th failure in a row waits up to min(max, initial * 2^(n-1)). */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Where log lines go (default: stderr). */
  log?: (line: string) => void;
  /** Called each time a session is welcomed. */
  onConnected?: (sessionId: string) => void;
}

/** Client-side state of one Connect stream. */
interface Session {
  readonly outbox: MessageQueue<ConnectRequest>;
  readonly abort: AbortController;
  welcomed: boolean;
  heartbeat?: NodeJS.Timeout;
  goodbye?: ServerGoodbye;
}

/** Why a running lease was aborted. */
class LeaseAborted extends Error {
  constructor(readonly why: "cancelled" | "timeout" | "stopped", detail: string) {
    super(detail);
  }
}

/** A device type by name: "linux", "windows", ... (as in orion.v1.DeviceType). */
export function parseDeviceType(name: string): DeviceType {
  const value = (DeviceType as unknown as Record<string, number | undefined>)[name.trim().toUpperCase()];
  if (value === undefined || value === DeviceType.UNSPECIFIED) {
    const names = Object.keys(DeviceType).filter((k) => Number.isNaN(Number(k)) && k !== "UNSPECIFIED");
    throw new Error(`unknown device type ${JSON.stringify(name)}; one of: ${names.map((n) => n.toLowerCase()).join(", ")}`);
  }
  return value as DeviceType;
}

export class DeviceDaemon {
  readonly deviceId: string;
  readonly target: string;
  readonly capacity: number;
  private readonly options: DeviceOptions;
  private readonly executors: Map<string, Executor>;
  private readonly defaultExecutor: string;
  private readonly log: (line: string) => void;

  /** Leases running now, with the controller that aborts each. */
  private readonly running = new Map<string, AbortController>();
  /** Results kept until the server acknowledges them (replayed after a reconnect). */
  private readonly pending = new Map<string, TaskResult>();
  private session: Session | undefined;
  private draining = false;
  private stopping = false;
  private runPromise: Promise<void> | undefined;
  private waiters: (() => void)[] = [];

  /** Observability (the CLI and tests read these). */
  sessionId = "";
  sessionsOpened = 0;
  completed = 0;
  lastError = "";

  constructor(options: DeviceOptions) {
    if (!options.deviceId) throw new Error("a device needs an id");
    checkSecurity(options.security ?? {}); // bad files fail here, not on every reconnect
    this.options = options;
    this.deviceId = options.deviceId;
    this.target = options.server;
    this.capacity = Math.max(1, options.capacity ?? 1);
    this.executors = options.executors ?? defaultExecutors();
    this.defaultExecutor = options.defaultExecutor ?? (this.executors.has("echo") ? "echo" : [...this.executors.keys()][0]);
    if (!this.executors.has(this.defaultExecutor)) {
      throw new Error(`default executor ${JSON.stringify(this.defaultExecutor)} is not one of ${[...this.executors.keys()].join(", ")}`);
    }
    this.log = options.log ?? ((line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`));
  }

  get connected(): boolean {
    return this.session?.welcomed ?? false;
  }

  get runningLeaseIds(): string[] {
    return [...this.running.keys()];
  }

  /** Runs the daemon in the background; the promise settles when it stops. */
  start(): Promise<void> {
    this.runPromise ??= this.run();
    return this.runPromise;
  }

  /**
   * Graceful stop: drain, let running assignments finish and their results be
   * acknowledged (up to `timeoutMs`), half-close the stream, then abort
   * whatever is left.
   */
  async stop(timeoutMs = 10_000): Promise<void> {
    const running = this.runPromise;
    if (running === undefined) return;
    this.drain("shutdown");
    await this.waitUntil(() => this.running.size === 0 && (this.pending.size === 0 || !this.connected), timeoutMs);
    this.stopping = true;
    this.session?.outbox.close(); // half-close: the server ends the stream
    this.notify();
    const ended = await Promise.race([running.then(() => true, () => true), after(2_000).then(() => false)]);
    if (!ended) this.session?.abort.abort();
    await running.catch(() => undefined);
  }

  /** Asks for no new assignments (running ones finish). */
  drain(reason = "drain"): void {
    this.draining = true;
    this.send({ case: "drain", value: { reason } });
  }

  // ------------------------------------------------------------------ sessions
  private async run(): Promise<void> {
    // One HTTP/2 connection per daemon; keepalive pings let it notice a dead
    // server (the protocol has no server -> device heartbeat).
    const { transport, sessionManager } = createOrionTransport(this.target, this.options.security, {
      pingIntervalMs: 30_000,
      pingTimeoutMs: 10_000,
    });
    const client = createClient(DeviceService, transport);
    let failures = 0;
    try {
      while (!this.stopping) {
        const { welcomed, reconnectAfterMs } = await this.oneSession(client);
        if (this.stopping) break;
        failures = welcomed ? 1 : failures + 1;
        const initial = this.options.backoffInitialMs ?? 500;
        const max = this.options.backoffMaxMs ?? 30_000;
        // Full jitter: uniformly random in [0, min(max, initial * 2^(n-1))).
        const delayMs = reconnectAfterMs ?? Math.random() * Math.min(max, initial * 2 ** (failures - 1));
        this.log(`device ${this.deviceId}: ${this.lastError ? `${this.lastError}; ` : ""}reconnecting in ${(delayMs / 1000).toFixed(2)}s (attempt ${failures})`);
        await this.waitUntil(() => this.stopping, delayMs);
      }
    } finally {
      for (const controller of this.running.values()) {
        controller.abort(new LeaseAborted("stopped", "the daemon stopped"));
      }
      sessionManager.abort();
      this.notify();
    }
  }

  /** Runs one Connect stream to its end. */
  private async oneSession(client: Client<typeof DeviceService>): Promise<{ welcomed: boolean; reconnectAfterMs?: number }> {
    this.lastError = "";
    const session: Session = { outbox: new MessageQueue(), abort: new AbortController(), welcomed: false };
    // Composing hello and publishing the session happen together (no await in
    // between): a result finished later is queued behind hello, never lost.
    session.outbox.push(create(ConnectRequestSchema, { message: { case: "hello", value: this.hello() } }));
    this.session = session;
    try {
      for await (const message of client.connect(session.outbox, { signal: session.abort.signal })) {
        this.onMessage(session, message);
      }
    } catch (err) {
      if (!session.abort.signal.aborted) {
        const error = ConnectError.from(err);
        if (FATAL_CODES.has(error.code)) {
          this.stopping = true;
          throw new DeviceStoppedError(
            `device ${this.deviceId}: the server refused the session: ${Code[error.code]}: ${error.rawMessage}`,
            Code[error.code],
          );
        }
        this.lastError = `${Code[error.code]}: ${error.rawMessage}`;
      }
    } finally {
      if (this.session === session) this.session = undefined;
      clearInterval(session.heartbeat);
      session.outbox.close();
      session.abort.abort();
      this.notify();
    }
    const goodbye = session.goodbye;
    if (goodbye?.reason === "superseded") {
      this.stopping = true;
      throw new DeviceStoppedError(`device ${this.deviceId}: another session for this device id took over`, "superseded");
    }
    return { welcomed: session.welcomed, reconnectAfterMs: goodbye?.reconnectAfter ? durationMs(goodbye.reconnectAfter) : undefined };
  }

  private hello(): DeviceHello {
    return create(DeviceHelloSchema, {
      deviceId: this.deviceId,
      deviceType: this.options.deviceType,
      platform: `${os.type()} ${os.release()} ${os.arch()} (Node.js ${process.version})`,
      capabilities: this.options.capabilities ?? [],
      capacity: this.capacity,
      systemInfo: systemInfo(),
      runningLeaseIds: [...this.running.keys()],
      unacknowledgedResults: [...this.pending.values()],
      daemonVersion: DAEMON_VERSION,
    });
  }

  private onMessage(session: Session, response: ConnectResponse): void {
    const message = response.message;
    switch (message.case) {
      case "welcome": {
        const welcome = message.value;
        session.welcomed = true;
        this.sessionId = welcome.sessionId;
        this.sessionsOpened += 1;
        const heartbeatMs = welcome.heartbeatInterval ? durationMs(welcome.heartbeatInterval) : 10_000;
        session.heartbeat = setInterval(() => {
          this.send({ case: "heartbeat", value: { sentAt: timestampNow(), runningLeaseIds: [...this.running.keys()] } });
        }, heartbeatMs || 10_000);
        if (this.draining) this.send({ case: "drain", value: { reason: "drain" } });
        this.log(`device ${this.deviceId} connected to ${this.target} (session ${this.sessionId}, heartbeat ${heartbeatMs / 1000}s)`);
        this.options.onConnected?.(this.sessionId);
        break;
      }
      case "assignment":
        this.onAssignment(message.value);
        break;
      case "cancel": {
        const controller = this.running.get(message.value.leaseId);
        if (controller) {
          this.log(`device ${this.deviceId}: lease ${message.value.leaseId} cancelled by the server (${message.value.reason})`);
          controller.abort(new LeaseAborted("cancelled", message.value.reason));
        }
        break;
      }
      case "resultAck":
        if (!message.value.accepted) {
          this.log(`device ${this.deviceId}: result for lease ${message.value.leaseId} not accepted (${message.value.reason})`);
        }
        this.pending.delete(message.value.leaseId); // forget it either way
        break;
      case "goodbye":
        session.goodbye = message.value;
        this.log(`device ${this.deviceId}: server said goodbye (${message.value.reason})`);
        break;
    }
    this.notify();
  }

  // ------------------------------------------------------------------ assignments
  private onAssignment(msg: TaskAssignment): void {
    const leaseId = msg.leaseId;
    if (this.running.has(leaseId) || this.pending.has(leaseId)) {
      this.send({ case: "ack", value: { leaseId } }); // delivered twice: already on it
      return;
    }
    if (this.draining) return this.reject(leaseId, "draining");
    if (this.running.size >= this.capacity) {
      return this.reject(leaseId, `capacity: already running ${this.running.size}/${this.capacity}`);
    }
    const taskData = msg.taskData ?? {};
    const name = taskData.executor || this.defaultExecutor;
    const executor = typeof name === "string" ? this.executors.get(name) : undefined;
    if (executor === undefined) {
      return this.reject(
        leaseId,
        `unsupported: executor ${JSON.stringify(name)} is not enabled on device ${this.deviceId}; enabled: ${[...this.executors.keys()].sort().join(", ")}`,
      );
    }
    const controller = new AbortController();
    const assignment: Assignment = {
      leaseId,
      taskId: msg.taskId,
      attempt: msg.attempt,
      taskText: msg.taskText,
      taskData,
      orionId: msg.orionId,
      timeoutMs: msg.timeout ? durationMs(msg.timeout) : undefined,
      deadline: msg.deadline ? timestampDate(msg.deadline) : undefined,
      traceContext: { ...msg.traceContext },
      deviceId: this.deviceId,
      star: msg.task,
      signal: controller.signal,
      reportProgress: (progress, message = "", data) => this.progress(msg, progress, message, data),
    };
    this.send({ case: "ack", value: { leaseId } });
    this.running.set(leaseId, controller);
    void this.execute(assignment, executor, controller);
  }

  private reject(leaseId: string, reason: string): void {
    this.log(`device ${this.deviceId}: rejecting lease ${leaseId}: ${reason}`);
    this.send({ case: "reject", value: { leaseId, reason } });
  }

  private progress(msg: TaskAssignment, progress: number, message: string, data?: JsonObject): void {
    if (this.options.sendProgress === false || !this.running.has(msg.leaseId)) return;
    this.send({
      case: "progress",
      value: {
        leaseId: msg.leaseId,
        taskId: msg.taskId,
        attempt: msg.attempt,
        progress: Number.isFinite(progress) ? Math.min(1, Math.max(0, progress)) : 0,
        message,
        data,
      },
    });
  }

  /** Runs one lease and queues its result; a cancelled lease sends none (it would be fenced off). */
  private async execute(assignment: Assignment, executor: Executor, controller: AbortController): Promise<void> {
    const started = Date.now();
    const result = create(TaskResultSchema, { leaseId: assignment.leaseId, taskId: assignment.taskId, attempt: assignment.attempt });
    const aborted = new Promise<never>((_, reject) => {
      controller.signal.addEventListener("abort", () => reject(controller.signal.reason), { once: true });
    });
    const timer =
      assignment.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            controller.abort(new LeaseAborted("timeout", `timed out after ${assignment.timeoutMs! / 1000}s on device ${this.deviceId}`));
          }, assignment.timeoutMs);
    try {
      // The race: an executor that ignores its signal still stops counting at a cancel or timeout.
      const value = await Promise.race([executor(assignment), aborted]);
      try {
        result.result = toValue(value);
        result.success = true;
      } catch (err) {
        result.error = `the executor's result is not JSON: ${errorText(err)}`;
      }
    } catch (err) {
      const reason = controller.signal.aborted ? controller.signal.reason : undefined;
      if (reason instanceof LeaseAborted && reason.why !== "timeout") {
        return; // cancelled by the server, or the daemon stops: no result
      }
      if (reason instanceof LeaseAborted) {
        result.error = reason.message;
      } else if (err instanceof ExecutorError) {
        result.error = err.message || "ExecutorError";
        if (err.result !== undefined) {
          try {
            result.result = toValue(err.result);
          } catch {
            // diagnostics only: a result that is not JSON is dropped
          }
        }
      } else {
        result.error = errorText(err);
      }
    } finally {
      clearTimeout(timer);
      this.running.delete(assignment.leaseId);
      this.notify();
    }
    result.startedAt = timestampFromMs(started);
    result.finishedAt = timestampNow();
    this.completed += 1;
    this.pending.set(assignment.leaseId, result);
    this.send({ case: "result", value: result });
    this.notify();
  }

  // ------------------------------------------------------------------ helpers
  /** Queues a message on the current session; dropped while disconnected (results stay pending). */
  private send(message: NonNullable<MessageInitShape<typeof ConnectRequestSchema>["message"]>): void {
    this.session?.outbox.push(create(ConnectRequestSchema, { message }));
  }

  private notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /** Waits (on state changes, no polling) until `predicate()`; false on timeout. */
  private async waitUntil(predicate: () => boolean, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
    }
    return true;
  }
}

/** What hello.system_info reports (the keys of the Python daemon's, where they apply). */
export function systemInfo(): JsonObject {
  return {
    platform: os.platform() === "win32" ? "windows" : os.platform(),
    os_version: os.release(),
    machine: os.arch(),
    cpu_count: os.cpus().length,
    memory_bytes: os.totalmem(),
    hostname: os.hostname(),
    node_version: process.version,
  };
}

function durationMs(duration: Duration): number {
  return Number(duration.seconds) * 1000 + duration.nanos / 1e6;
}

function toValue(value: JsonValue | undefined) {
  // JSON.stringify drops undefined and throws on cycles / BigInt, like a JSON encoder.
  const json = value === undefined ? null : (JSON.parse(JSON.stringify(value)) as JsonValue);
  return fromJson(ValueSchema, json);
}

function errorText(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

function after(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
