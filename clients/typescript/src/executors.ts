/**
 * Executors: what the device daemon does with an assignment. The built-ins
 * behave like the Python daemon's (orion_grpc/device/executors.py), so an orion
 * gives the same results on a Python and a TypeScript device.
 */
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";

import type { TaskStar } from "./gen/orion/v1/task_star_pb.js";

/** One attempt of one star, as an executor sees it. */
export interface Assignment {
  readonly leaseId: string;
  readonly taskId: string;
  /** 1-based. */
  readonly attempt: number;
  /** "Task Description: ...\nTips for Completion:\n - ..." */
  readonly taskText: string;
  /** The star's JSON input. */
  readonly taskData: JsonObject;
  /** Empty for ExecuteSingleTask. */
  readonly orionId: string;
  /** The star's timeout in milliseconds (the daemon enforces it), if any. */
  readonly timeoutMs: number | undefined;
  /** When the server expires the lease, if ever. */
  readonly deadline: Date | undefined;
  /** W3C "traceparent" / "tracestate" of the star's span, when the server traces. */
  readonly traceContext: Readonly<Record<string, string>>;
  /** The device running it. */
  readonly deviceId: string;
  /** The full star, for stars of an orion. */
  readonly star: TaskStar | undefined;
  /** Aborted when the server cancels the lease, its timeout passes or the daemon stops. */
  readonly signal: AbortSignal;
  /** Tells the server how far along this attempt is (progress in [0, 1]); never blocks. */
  reportProgress(progress: number, message?: string, data?: JsonObject): void;
}

/** Runs an assignment: resolves to its JSON result, or rejects to fail the star. */
export type Executor = (assignment: Assignment) => Promise<JsonValue>;

/** Fails the star with `message`; `result` (JSON) travels along for diagnostics. */
export class ExecutorError extends Error {
  constructor(message: string, readonly result?: JsonValue) {
    super(message);
    this.name = "ExecutorError";
  }
}

/** Returns what was sent: the task text and task_data (for demos and tests). */
export const echo: Executor = async (a) => ({
  status: "ok",
  device_id: a.deviceId,
  task_id: a.taskId,
  text: a.taskText,
  task_data: a.taskData,
});

/**
 * Sleeps `task_data.seconds` (default 1), reporting progress along the way.
 * `task_data.fail` (a message) fails the star afterwards; `task_data.result` is
 * returned instead of the default `{"status": "ok", "slept": seconds, ...}`.
 */
export const sleep: Executor = async (a) => {
  const raw = a.taskData.seconds ?? 1;
  const seconds = typeof raw === "number" ? raw : typeof raw === "string" ? Number(raw) : NaN;
  if (!Number.isFinite(seconds) || seconds < 0) {
    throw new ExecutorError(`sleep: task_data.seconds must be a number >= 0, got ${JSON.stringify(raw)}`);
  }
  const steps = Math.max(1, Math.min(10, Math.ceil(seconds * 4))); // a report every >= 0.25 s
  for (let step = 1; step <= steps; step++) {
    await delay((seconds * 1000) / steps, a.signal);
    a.reportProgress(step / steps, `slept ${((seconds * step) / steps).toFixed(2)}s`);
  }
  if (a.taskData.fail) {
    throw new ExecutorError(String(a.taskData.fail));
  }
  if ("result" in a.taskData) {
    return a.taskData.result ?? null;
  }
  return { status: "ok", slept: seconds, device_id: a.deviceId, task_id: a.taskId };
};

/** The built-in executors by name. */
export function defaultExecutors(): Map<string, Executor> {
  return new Map([
    ["echo", echo],
    ["sleep", sleep],
  ]);
}

/** Resolves after `ms`, or rejects with the signal's reason once it is aborted. */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
