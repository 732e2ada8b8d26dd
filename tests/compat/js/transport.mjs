// capnp-es's RPC transport over a stream socket, and the frame of a run of checks, shared
// by the JavaScript clients of compat_test (client.mjs, caps.mjs).
import net from "node:net";
import { Conn, Message } from "capnp-es";
import { Message as RpcMessage } from "capnp-es/capnp/rpc";

/// capnp-es's RPC Transport over a stream socket: Cap'n Proto's stream framing (segment
/// table, then the segments), one rpc.capnp Message per frame.
export class SocketTransport {
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

export function connect(address) {
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

/// Connects to `address`, runs `checks(conn)` (which prints a line per check and throws on
/// the first that fails), then prints "done"; on a failure prints it and exits with 1.
export async function runChecks(address, checks) {
  try {
    const socket = await connect(address);
    socket.setNoDelay(true);
    const conn = new Conn(new SocketTransport(socket));
    await checks(conn);
    conn.shutdown();
    socket.destroy();
    console.log("done");
  } catch (e) {
    console.log(`FAILED: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  }
}
