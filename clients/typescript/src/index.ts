/** The Orion TypeScript client: generated messages and services, the submit/watch wrapper and the device daemon. */
export * from "./client.js";
export * from "./device.js";
export * from "./executors.js";
export { MessageQueue } from "./queue.js";
export * from "./security.js";
