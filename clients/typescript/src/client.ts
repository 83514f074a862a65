/**
 * A typed wrapper over the generated Orion services for submitting orions and
 * watching them: `submit`, `watch` (the orion's events, from its first one)
 * and `waitForEnd` (follow it to COMPLETED / FAILED / CANCELLED).
 *
 *   const client = new OrionClient("127.0.0.1:50051");
 *   // or, to a server with TLS and tokens:
 *   // new OrionClient("orion.example:50051", { ca: "ca.pem", token: process.env.ORION_TOKEN });
 *   const { orionId } = await client.submit(readOrionFile("orion.json"));
 *   const end = await client.waitForEnd(orionId, (event) => console.log(event.type));
 *   client.close();
 */
import { readFileSync } from "node:fs";

import { create, fromJson, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import type { Http2SessionManager } from "@connectrpc/connect-node";

import { type Event, EventType } from "./gen/orion/v1/event_pb.js";
import { EventService } from "./gen/orion/v1/event_service_pb.js";
import {
  OrchestratorService,
  type SubmitOrionRequest,
  SubmitOrionRequestSchema,
  type SubmitOrionResponse,
} from "./gen/orion/v1/orchestrator_service_pb.js";
import { type OrionResult, OrionState, TaskOrionSchema } from "./gen/orion/v1/orion_pb.js";
import { type SecurityOptions, createOrionTransport } from "./security.js";

/** The events that end an orion. */
export const TERMINAL_EVENTS: ReadonlySet<EventType> = new Set([
  EventType.ORION_COMPLETED,
  EventType.ORION_FAILED,
  EventType.ORION_CANCELLED,
]);

export interface WatchOptions {
  /** Replay the orion's retained events before the live ones (default true: nothing is missed). */
  includeHistory?: boolean;
  /** Only these event types (default: all). */
  types?: EventType[];
  /** Ends the watch. */
  signal?: AbortSignal;
}

export interface OrionEnd {
  /** The ORION_COMPLETED / ORION_FAILED / ORION_CANCELLED event. */
  event: Event;
  /** Its final result (per-star results and errors, state, statistics). */
  result: OrionResult;
  /** True only if the orion COMPLETED. */
  completed: boolean;
}

export class OrionClient {
  readonly orchestrator: Client<typeof OrchestratorService>;
  readonly events: Client<typeof EventService>;
  private readonly sessionManager: Http2SessionManager;

  /**
   * `target` is the server's "host:port". Without `security` the connection is
   * plaintext HTTP/2 with no token; `security` adds TLS (`ca`, `tls`), a client
   * certificate (`cert` + `key`) and a bearer token (`token`).
   */
  constructor(
    readonly target: string,
    security: SecurityOptions = {},
  ) {
    const { transport, sessionManager } = createOrionTransport(target, security);
    this.sessionManager = sessionManager;
    this.orchestrator = createClient(OrchestratorService, transport);
    this.events = createClient(EventService, transport);
  }

  /** Submits an orion; returns at once with its id (follow it with watch / waitForEnd). */
  submit(request: MessageInitShape<typeof SubmitOrionRequestSchema>): Promise<SubmitOrionResponse> {
    return this.orchestrator.submitOrion(request);
  }

  /** The orion's events (bookmarks skipped), from its first retained one; ends with the orion. */
  async *watch(orionId: string, options: WatchOptions = {}): AsyncGenerator<Event> {
    const stream = this.events.watchEvents(
      { orionId, includeHistory: options.includeHistory ?? true, types: options.types ?? [] },
      { signal: options.signal },
    );
    for await (const response of stream) {
      const event = response.event;
      if (event === undefined || event.type === EventType.BOOKMARK) continue;
      yield event;
      if (TERMINAL_EVENTS.has(event.type)) return;
    }
    throw new Error(`the event stream of ${orionId} ended before the orion did`);
  }

  /** Follows the orion until it ends; `onEvent` sees every event on the way. */
  async waitForEnd(orionId: string, onEvent?: (event: Event) => void, signal?: AbortSignal): Promise<OrionEnd> {
    for await (const event of this.watch(orionId, { signal })) {
      onEvent?.(event);
      if (TERMINAL_EVENTS.has(event.type)) {
        const result = event.payload.case === "orion" ? event.payload.value.result : undefined;
        if (result === undefined) throw new Error(`${EventType[event.type]} of ${orionId} carries no result`);
        return { event, result, completed: result.status === OrionState.COMPLETED };
      }
    }
    throw new Error(`the event stream of ${orionId} ended before the orion did`); // unreachable: watch throws
  }

  /** Closes the connection. */
  close(): void {
    this.sessionManager.abort();
  }
}

/**
 * Reads an orion file in the proto JSON mapping (as in examples/*.json): a
 * SubmitOrionRequest (`{"orion": {...}, "assignmentStrategy": ...}`) or just
 * its TaskOrion. Field names camelCase or snake_case, enums by name.
 */
export function readOrionFile(path: string): SubmitOrionRequest {
  return parseOrion(JSON.parse(readFileSync(path, "utf8")) as JsonValue, path);
}

export function parseOrion(json: JsonValue, name = "<orion>"): SubmitOrionRequest {
  let requestError: unknown;
  try {
    const request = fromJson(SubmitOrionRequestSchema, json);
    if (request.orion !== undefined) return request;
  } catch (err) {
    requestError = err;
  }
  try {
    return create(SubmitOrionRequestSchema, { orion: fromJson(TaskOrionSchema, json) });
  } catch (err) {
    const why = requestError ?? err;
    throw new Error(`${name} is neither a SubmitOrionRequest nor a TaskOrion in the proto JSON mapping: ${why instanceof Error ? why.message : String(why)}`);
  }
}
