#!/usr/bin/env node
/**
 * Submits an orion file and follows its events until it ends (the example of
 * the OrionClient wrapper):
 *
 *   node dist/bin/submit.js [--server H:P] [--strategy capability_match]
 *       [--ca ca.pem] [--token T] FILE.json
 *
 * TLS with `--ca` (or `--tls`), a client certificate with `--cert`/`--key`, a
 * client token with `--token` or ORION_TOKEN (ORION_CA & co. likewise).
 * Prints one line per event, then each star's result; exits 0 only if the
 * orion COMPLETED (1 if it failed or was cancelled, 2 on any other error).
 */
import { toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { parseArgs } from "node:util";

import { OrionClient, readOrionFile } from "../client.js";
import { SECURITY_USAGE, securityArgs, securityFromArgs } from "../security.js";
import { type Event, EventType } from "../gen/orion/v1/event_pb.js";
import { AssignmentStrategy, OrionState } from "../gen/orion/v1/orion_pb.js";

function describe(event: Event): string {
  let line = `event ${event.sequence} ${EventType[event.type]}`;
  if (event.taskId) line += ` task=${event.taskId}`;
  if (event.deviceId) line += ` device=${event.deviceId}`;
  if (event.payload.case === "task" && event.payload.value.error) line += ` error=${JSON.stringify(event.payload.value.error)}`;
  if (event.payload.case === "orion" && event.payload.value.state) line += ` state=${OrionState[event.payload.value.state]}`;
  return line;
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    options: {
      server: { type: "string", default: process.env.ORION_SERVER || "127.0.0.1:50051" },
      strategy: { type: "string" },
      ...securityArgs("ORION_TOKEN"),
    },
    allowPositionals: true,
  });
  if (positionals.length !== 1) {
    console.error(`usage: submit [--server H:P] [--strategy round_robin|capability_match|load_balance]\n              ${SECURITY_USAGE} FILE.json`);
    return 2;
  }
  const request = readOrionFile(positionals[0]);
  if (values.strategy) {
    const strategy = (AssignmentStrategy as unknown as Record<string, number | undefined>)[values.strategy.toUpperCase()];
    if (!strategy) throw new Error(`unknown strategy ${values.strategy}`);
    request.assignmentStrategy = strategy;
  }
  const client = new OrionClient(values.server!, securityFromArgs(values));
  try {
    const submitted = await client.submit(request);
    console.log(`submitted ${submitted.orionId}: ${submitted.orion?.tasks.length ?? 0} stars`);
    const end = await client.waitForEnd(submitted.orionId, (event) => console.log(describe(event)));
    console.log(`orion ${end.result.orionId} ${OrionState[end.result.status]}: ${end.result.totalTasks} stars`);
    for (const taskId of Object.keys(end.result.results).sort()) {
      console.log(`result ${taskId} ${JSON.stringify(toJson(ValueSchema, end.result.results[taskId]))}`);
    }
    for (const taskId of Object.keys(end.result.errors).sort()) {
      console.log(`error ${taskId} ${end.result.errors[taskId]}`);
    }
    return end.completed ? 0 : 1;
  } finally {
    client.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`error: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(2);
  },
);
