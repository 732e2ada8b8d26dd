// A JavaScript Cap'n Proto RPC client (capnp-es, from npm) calling Echo on a standard
// Cap'n Proto endpoint: what a team's Node.js tool that will never link zcrpc does.
// compat_test's JavaScriptClient runs it against zcrpc's capnp listeners.
//
//   node client.mjs ADDRESS GENERATED_DIR
//
// ADDRESS: host:port, unix:/path or unix-abstract:name. GENERATED_DIR holds echo.js, made
// from schemas/echo.capnp by capnp-es's code generator (capnpc-js). Prints one line per
// check; exits 0 when every check passed, 1 with the reason otherwise.
import { runChecks } from "./transport.mjs";

const [, , address, generated] = process.argv;
const { Echo } = await import(generated + "/echo.js");

function pattern(size, seed) {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (i * 131 + seed) & 0xff;
  return out;
}

await runChecks(address, async (conn) => {
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
});
