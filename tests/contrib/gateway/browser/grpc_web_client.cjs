// Calls the shop through the gateway with Connect's gRPC-Web transport (an implementation of
// the protocol that shares no code with microframe) and prints what it saw as one JSON object.
// Usage: node grpc_web_client.cjs DESCRIPTOR_SET BASE_URL
"use strict";

const fs = require("fs");
const { createFileRegistry, fromBinary, toJson } = require("@bufbuild/protobuf");
const { FileDescriptorSetSchema } = require("@bufbuild/protobuf/wkt");
const { Code, ConnectError, createClient } = require("@connectrpc/connect");
const { createGrpcWebTransport } = require("@connectrpc/connect-node");

const [setPath, baseUrl] = process.argv.slice(2);
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, fs.readFileSync(setPath)));
const service = registry.getService("shop.Shop");
const errorInfo = registry.getMessage("google.rpc.ErrorInfo");

function client(useBinaryFormat) {
  const transport = createGrpcWebTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat });
  return createClient(service, transport);
}

function failure(error, seen) {
  const err = ConnectError.from(error);
  return {
    code: Code[err.code],
    message: err.rawMessage,
    seen,
    details: err.findDetails(errorInfo).map((d) => toJson(errorInfo, d)),
  };
}

async function main() {
  const shop = client(true);
  const out = {};
  out.unary = (await shop.sayHello({ name: "Ada" })).message;
  out.json = (await client(false).sayHello({ name: "Grace" })).message;
  out.metadata = (await shop.sayHello({ name: "md:x-tenant" }, { headers: { "x-tenant": "acme" } })).message;
  out.stream = [];
  for await (const tick of shop.count({ to: 3 })) out.stream.push(tick.n);
  const seen = [];
  try {
    for await (const tick of shop.count({ to: 14 })) seen.push(tick.n);
  } catch (error) {
    out.streamError = failure(error, seen);
  }
  try {
    await shop.sayHello({ name: "bad" });
  } catch (error) {
    out.unaryError = failure(error, []);
  }
  const slow = [];
  const started = Date.now();
  try {
    for await (const tick of shop.count({ to: 99 }, { timeoutMs: 300 })) slow.push(tick.n);
  } catch (error) {
    out.deadline = { ...failure(error, slow.length), ms: Date.now() - started };
  }
  const book = await shop.describe({ id: "e1", big: 9007199254740993n, kind: 1, counts: { x: 2 } });
  out.describe = toJson(registry.getMessage("shop.Entry"), book);
  console.log(JSON.stringify(out));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
