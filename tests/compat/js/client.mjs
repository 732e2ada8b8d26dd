// A JavaScript Cap'n Proto RPC client (capnp-es, from npm) calling Echo on a standard
// Cap'n Proto endpoint: what a team's Node.js tool that will never link zcrpc does.
// compat_test's JavaScriptClient runs it against zcrpc's capnp listeners.
//
//   node client.mjs ADDRESS GENERATED_DIR
//
// ADDRESS: host:port, unix:/path or unix-abstract:name. GENERATED_DIR holds echo.js, made
// from schemas/echo.capnp by capnp-es's code generator (capnpc-js). Prints one line per
// check; exits 0 when every check passed, 1 with the reason otherwise.
import net from "node:net";
import { Conn, Message } from "capnp-es";
import { Message as RpcMessage } from "capnp-es/capnp/rpc";

const [, , address, generated] = process.argv;
const { Echo } = await import(generated + "/echo.js");

/// capnp-es's RPC Transport over a stream socket: Cap'n Proto's stream framing (segment
/// table, then the segments), one rpc.capnp Message per frame.
class SocketTransport {
  constructor(socket) {
    this.socket = socket;
    this.buffer = Buffer.alloc(0);
    this.queue = [];
    this.waiters = [];
    this.failure = null;
    this.closing = false;
    socket.on("data", (d) => this.received(d));
    socket.on("error", (e) => this.fail(e));
    socket.on("close", () => this.fail(new Error("the server closed the connection")));
  }
  received(data) {
    this.buffer = Buffer.concat([this.buffer, data]);
    for (;;) {
      if (this.buffer.length < 4) return;
      const segments = this.buffer.readUInt32LE(0) + 1;
      const tableBytes = 4 + segments * 4 + (segments % 2 === 0 ? 4 : 0);
      if (this.buffer.length < tableBytes) return;
      let words = 0;
      for (let i = 0; i < segments; i++) words += this.buffer.readUInt32LE(4 + i * 4);
      const total = tableBytes + words * 8;
      if (this.buffer.length < total) return;
      const frame = this.buffer.subarray(0, total);
      this.buffer = this.buffer.subarray(total);
      const bytes = frame.buffer.slice(frame.byteOffset, frame.byteOffset + frame.length);
      const message = new Message(bytes, false).getRoot(RpcMessage);
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(message);
      else this.queue.push(message);
    }
  }
  fail(e) {
    if (this.closing) return;  // our own close(): nothing waits for more
    if (!this.failure) this.failure = e;
    for (const w of this.waiters.splice(0)) w.reject(e);
  }
  sendMessage(message) {
    this.socket.write(Buffer.from(message.segment.message.toArrayBuffer()));
  }
  recvMessage() {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
  close() {
    this.closing = true;
    this.socket.destroy();
  }
}

function connect(address) {
  let options;
  if (address.startsWith("unix:")) options = { path: address.slice("unix:".length) };
  else if (address.startsWith("unix-abstract:")) options = { path: "\0" + address.slice("unix-abstract:".length) };
  else {
    const colon = address.lastIndexOf(":");
    options = { host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
  }
  return new Promise((resolve, reject) => {
    const socket = net.connect(options, () => resolve(socket));
    socket.once("error", reject);
  });
}

function pattern(size, seed) {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (i * 131 + seed) & 0xff;
  return out;
}

try {
  const socket = await connect(address);
  socket.setNoDelay(true);
  const conn = new Conn(new SocketTransport(socket));
  const echo = conn.bootstrap(Echo);

  for (const size of [0, 1, 64, 4096, 1 << 20]) {
    const want = pattern(size, 7);
    const results = await echo.echo((p) => { p._initData(size).copyBuffer(want); }).promise();
    const got = results.data.toUint8Array();
    if (got.length !== size || !got.every((b, i) => b === want[i]))
      throw new Error(`echo of ${size} bytes came back as ${got.length} different bytes`);
    console.log(`echo ${size} ok`);
  }
  // Many calls in flight at once on the one connection.
  const calls = [];
  for (let i = 0; i < 100; i++) {
    const want = pattern(i * 3, i);
    calls.push(echo.echo((p) => { p._initData(want.length).copyBuffer(want); }).promise().then((r) => {
      const got = r.data.toUint8Array();
      if (got.length !== want.length || !got.every((b, j) => b === want[j])) throw new Error(`concurrent echo ${i} differs`);
    }));
  }
  await Promise.all(calls);
  console.log("100 concurrent echoes ok");
  await echo.ping().promise();
  console.log("ping ok");
  await echo.sink((p) => { p._initData(100).copyBuffer(pattern(100, 1)); }).promise();
  console.log("sink ok");
  const delayed = await echo.delay((p) => { p.micros = 2000n; }).promise();
  if (delayed.cancelled !== false) throw new Error("delay() answered cancelled");
  console.log("delay ok");
  try {
    await echo.fail((p) => { p.code = 42; p.message = "no such key"; }).promise();
    throw new Error("fail() returned");
  } catch (e) {
    if (!String(e.message).includes("no such key [code 42]")) throw new Error(`fail(): unexpected error: ${e.message}`);
    console.log(`fail ok: ${e.message}`);
  }
  conn.shutdown();
  socket.destroy();
  console.log("done");
} catch (e) {
  console.log(`FAILED: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
}
