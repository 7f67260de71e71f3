/*
 * The standard cases of gRPC's interop test descriptions
 * (doc/interop-test-descriptions.md of the grpc repository), run by grpc-js, a gRPC
 * implementation that shares no code with grpcio nor with the server under test.
 *
 *   node interop_client.js --server_host=127.0.0.1 --server_port=50051 \
 *     --proto_root=idl [--test_case=all|name,name...] [--case_timeout_ms=10000]
 *
 * Prints one line a case, "<name> PASS" or "<name> FAIL <reason>", and exits 1 when any case
 * failed (2 on a bad command line).
 */

'use strict';

const assert = require('assert');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const ECHO_INITIAL = 'x-grpc-test-echo-initial';
const ECHO_TRAILING = 'x-grpc-test-echo-trailing-bin';

function parseArgs(argv) {
  const options = {
    server_host: '127.0.0.1',
    server_port: '',
    proto_root: path.join(__dirname, 'idl'),
    test_case: 'all',
    case_timeout_ms: '10000',
  };
  for (const arg of argv) {
    const match = /^--([a-z_]+)=(.*)$/.exec(arg);
    if (!match || !(match[1] in options)) {
      throw new Error(`unknown argument ${arg}`);
    }
    options[match[1]] = match[2];
  }
  if (!options.server_port) {
    throw new Error('--server_port is required');
  }
  return options;
}

function zeros(size) {
  return Buffer.alloc(size);
}

function assertPayload(payload, size) {
  assert.ok(payload, 'the reply has no payload');
  assert.strictEqual(payload.type, 'COMPRESSABLE', 'payload type');
  assert.strictEqual(payload.body.length, size, 'payload size');
  assert.ok(payload.body.every((byte) => byte === 0), 'the payload body is not all zeros');
}

function unary(client, method, request, metadata, options) {
  // The reply (or the error), the initial metadata and the final status of one unary call.
  return new Promise((resolve) => {
    const outcome = { error: null, reply: null, metadata: null, status: null };
    let pending = 2;
    const done = () => {
      pending -= 1;
      if (pending === 0) resolve(outcome);
    };
    const call = client[method](request, metadata || new grpc.Metadata(), options || {},
      (error, reply) => {
        outcome.error = error;
        outcome.reply = reply;
        done();
      });
    call.on('metadata', (received) => { outcome.metadata = received; });
    call.on('status', (status) => { outcome.status = status; done(); });
  });
}

function finished(call) {
  // The replies, the initial metadata and the final status of a call with a reply stream.
  return new Promise((resolve) => {
    const outcome = { replies: [], metadata: null, status: null };
    call.on('data', (reply) => outcome.replies.push(reply));
    call.on('metadata', (received) => { outcome.metadata = received; });
    call.on('error', () => {});  // the status says how the call ended
    call.on('status', (status) => { outcome.status = status; resolve(outcome); });
  });
}

function assertCode(status, code, what) {
  assert.ok(status, `${what}: no status`);
  assert.strictEqual(status.code, code,
    `${what}: status ${status.code} (${status.details}), expected ${code}`);
}

const cases = {
  async empty_unary({ test }) {
    const { error, reply } = await unary(test, 'EmptyCall', {});
    assert.ifError(error);
    assert.deepStrictEqual(reply, {});
  },

  async large_unary({ test }) {
    const { error, reply } = await unary(test, 'UnaryCall', {
      response_type: 'COMPRESSABLE', response_size: 314159, payload: { body: zeros(271828) },
    });
    assert.ifError(error);
    assertPayload(reply.payload, 314159);
  },

  async client_streaming({ test }) {
    const outcome = new Promise((resolve) => {
      const call = test.StreamingInputCall((error, reply) => resolve({ error, reply }));
      for (const size of [27182, 8, 1828, 45904]) {
        call.write({ payload: { body: zeros(size) } });
      }
      call.end();
    });
    const { error, reply } = await outcome;
    assert.ifError(error);
    assert.strictEqual(reply.aggregated_payload_size, 74922);
  },

  async server_streaming({ test }) {
    const sizes = [31415, 9, 2653, 58979];
    const call = test.StreamingOutputCall({
      response_type: 'COMPRESSABLE', response_parameters: sizes.map((size) => ({ size })),
    });
    const { replies, status } = await finished(call);
    assertCode(status, grpc.status.OK, 'the stream');
    assert.strictEqual(replies.length, sizes.length, 'number of replies');
    replies.forEach((reply, i) => assertPayload(reply.payload, sizes[i]));
  },

  async ping_pong({ test }) {
    const requests = [27182, 8, 1828, 45904];
    const replies = [31415, 9, 2653, 58979];
    const call = test.FullDuplexCall();
    const send = (i) => call.write({
      response_type: 'COMPRESSABLE',
      response_parameters: [{ size: replies[i] }],
      payload: { body: zeros(requests[i]) },
    });
    const seen = [];
    const ended = new Promise((resolve, reject) => {
      call.on('data', (reply) => {
        // Each reply must arrive before the next request is sent.
        try {
          assertPayload(reply.payload, replies[seen.length]);
        } catch (err) {
          call.cancel();
          reject(err);
          return;
        }
        seen.push(reply);
        if (seen.length < requests.length) send(seen.length); else call.end();
      });
      call.on('error', () => {});
      call.on('status', resolve);
    });
    send(0);
    const status = await ended;
    assertCode(status, grpc.status.OK, 'the stream');
    assert.strictEqual(seen.length, requests.length, 'number of replies');
  },

  async empty_stream({ test }) {
    const call = test.FullDuplexCall();
    const outcome = finished(call);
    call.end();
    const { replies, status } = await outcome;
    assertCode(status, grpc.status.OK, 'the stream');
    assert.strictEqual(replies.length, 0, 'number of replies');
  },

  async timeout_on_sleeping_server({ test }) {
    const call = test.FullDuplexCall({ deadline: Date.now() + 1 });
    const outcome = finished(call);
    call.write({ payload: { body: zeros(27182) } });
    const { status } = await outcome;
    assertCode(status, grpc.status.DEADLINE_EXCEEDED, 'the call');
  },

  async cancel_after_begin({ test }) {
    const outcome = new Promise((resolve) => {
      const call = test.StreamingInputCall((error) => resolve(error));
      call.cancel();
    });
    const error = await outcome;
    assert.ok(error, 'the cancelled call succeeded');
    assertCode(error, grpc.status.CANCELLED, 'the call');
  },

  async cancel_after_first_response({ test }) {
    const call = test.FullDuplexCall();
    const outcome = finished(call);
    call.once('data', () => call.cancel());
    call.write({
      response_type: 'COMPRESSABLE',
      response_parameters: [{ size: 31415 }],
      payload: { body: zeros(27182) },
    });
    const { replies, status } = await outcome;
    assertCode(status, grpc.status.CANCELLED, 'the call');
    assert.strictEqual(replies.length, 1, 'replies before the cancellation');
  },

  async custom_metadata({ test }) {
    const metadata = () => {
      const sent = new grpc.Metadata();
      sent.set(ECHO_INITIAL, 'test_initial_metadata_value');
      sent.set(ECHO_TRAILING, Buffer.from('ababab', 'hex'));
      return sent;
    };
    const check = (what, received, status) => {
      assert.ok(received, `${what}: no initial metadata`);
      assert.deepStrictEqual(received.get(ECHO_INITIAL), ['test_initial_metadata_value'],
        `${what}: initial metadata`);
      const trailer = status.metadata.get(ECHO_TRAILING);
      assert.strictEqual(trailer.length, 1, `${what}: the trailer ${ECHO_TRAILING}`);
      assert.strictEqual(trailer[0].toString('hex'), 'ababab', `${what}: trailing metadata`);
    };
    const single = await unary(test, 'UnaryCall', {
      response_type: 'COMPRESSABLE', response_size: 314159, payload: { body: zeros(271828) },
    }, metadata());
    assert.ifError(single.error);
    assertPayload(single.reply.payload, 314159);
    check('UnaryCall', single.metadata, single.status);

    const call = test.FullDuplexCall(metadata());
    const outcome = finished(call);
    call.write({
      response_type: 'COMPRESSABLE',
      response_parameters: [{ size: 314159 }],
      payload: { body: zeros(271828) },
    });
    call.end();
    const stream = await outcome;
    assertCode(stream.status, grpc.status.OK, 'FullDuplexCall');
    assert.strictEqual(stream.replies.length, 1, 'FullDuplexCall: number of replies');
    assertPayload(stream.replies[0].payload, 314159);
    check('FullDuplexCall', stream.metadata, stream.status);
  },

  async status_code_and_message({ test }) {
    const message = 'test status message';
    const request = { response_status: { code: 2, message } };
    const single = await unary(test, 'UnaryCall', request);
    assertCode(single.status, grpc.status.UNKNOWN, 'UnaryCall');
    assert.strictEqual(single.status.details, message, 'UnaryCall: message');

    const call = test.FullDuplexCall();
    const outcome = finished(call);
    call.write(request);
    call.end();
    const { status } = await outcome;
    assertCode(status, grpc.status.UNKNOWN, 'FullDuplexCall');
    assert.strictEqual(status.details, message, 'FullDuplexCall: message');
  },

  async special_status_message({ test }) {
    const message = '\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \ud83d\ude08\t\n';
    const { status } = await unary(test, 'UnaryCall', { response_status: { code: 2, message } });
    assertCode(status, grpc.status.UNKNOWN, 'UnaryCall');
    assert.strictEqual(status.details, message, 'message');
  },

  async unimplemented_method({ test }) {
    const { status } = await unary(test, 'UnimplementedMethod', {});
    assertCode(status, grpc.status.UNIMPLEMENTED, 'UnimplementedMethod');
  },

  async unimplemented_service({ unimplemented }) {
    const { status } = await unary(unimplemented, 'UnimplementedCall', {});
    assertCode(status, grpc.status.UNIMPLEMENTED, 'UnimplementedService.UnimplementedCall');
  },
};

function withinTime(promise, ms) {
  let timer;
  const late = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no end within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

async function main() {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(err.message);
    return 2;
  }
  const names = options.test_case === 'all' ? Object.keys(cases) : options.test_case.split(',');
  const unknown = names.filter((name) => !(name in cases));
  if (unknown.length) {
    console.error(`unknown test cases: ${unknown.join(', ')}`);
    return 2;
  }
  const definition = protoLoader.loadSync('src/proto/grpc/testing/test.proto', {
    keepCase: true, defaults: true, enums: String, includeDirs: [options.proto_root],
  });
  const testing = grpc.loadPackageDefinition(definition).grpc.testing;
  const address = `${options.server_host}:${options.server_port}`;
  const credentials = grpc.credentials.createInsecure();
  const clients = {
    test: new testing.TestService(address, credentials),
    unimplemented: new testing.UnimplementedService(address, credentials),
  };
  let failures = 0;
  for (const name of names) {
    try {
      await withinTime(cases[name](clients), Number(options.case_timeout_ms));
      console.log(`${name} PASS`);
    } catch (err) {
      failures += 1;
      console.log(`${name} FAIL ${String(err.message).replace(/\s+/g, ' ')}`);
    }
  }
  Object.values(clients).forEach((client) => client.close());
  return failures ? 1 : 0;
}

main().then((code) => { process.exitCode = code; }, (err) => {
  console.error(err.stack);
  process.exitCode = 1;
});
