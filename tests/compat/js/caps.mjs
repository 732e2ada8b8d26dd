// A JavaScript Cap'n Proto RPC client (capnp-es) passing capabilities both ways with a
// zcrpc service: it exports a callback object the zcrpc handler calls, during the call
// and from a later one, and calls objects the zcrpc handler returns, handing one back.
// compat_test's JavaScriptClientPassesAndReceivesCapabilities runs it against zcrpc's
// capnp listeners serving tests/compat/lobby.capnp.
//
//   node caps.mjs ADDRESS GENERATED_DIR
//
// ADDRESS as for client.mjs. GENERATED_DIR holds lobby.js, made from lobby.capnp by
// capnp-es's code generator (capnpc-js). Prints one line per check; exits 0 when every
// check passed, 1 with the reason otherwise.
import { runChecks } from "./transport.mjs";

const [, , address, generated] = process.argv;
const { Lobby, Counter, Greeter } = await import(generated + "/lobby.js");

/// The callback the client exports: adds what the server sends it.
class CounterImpl {
  total = 0n;
  calls = 0;
  async add(params, results) {
    this.total += params.value;
    this.calls += 1;
    results.total = this.total;
  }
}

/// An object of the client's that the server may call back (isMine of one not its own).
class GreeterImpl {
  async greet(params, results) {
    results.text = `${params.greeting} from javascript`;
  }
}

function expect(what, got, want) {
  if (got !== want) throw new Error(`${what}: got ${got}, want ${want}`);
  console.log(`${what} ok`);
}

await runChecks(address, async (conn) => {
  const lobby = conn.bootstrap(Lobby);

  // A callback the handler calls five times before it answers.
  const counter = new CounterImpl();
  const counterClient = new Counter.Server(counter).client();
  const counted = await lobby.count((p) => { p.counter = counterClient; p.times = 5n; }).promise();
  expect("count total", counted.total, 15n);
  expect("callbacks run", counter.calls, 5);
  // Kept by the server and called from a later call.
  await lobby.keep((p) => { p.counter = counterClient; }).promise();
  const later = await lobby.addKept((p) => { p.value = 100n; }).promise();
  expect("kept callback total", later.total, 115n);
  expect("kept callback in the client", counter.total, 115n);

  // An object the handler returns, called afterwards.
  const alice = (await lobby.greeter((p) => { p.name = "alice"; }).promise()).greeter;
  const hello = await alice.greet((p) => { p.greeting = "hello"; }).promise();
  expect("returned object", hello.text, "hello from alice");
  // Pipelined: a call on the object before the answer that carries it came.
  const bob = lobby.greeter((p) => { p.name = "bob"; }).getGreeter();
  const hi = await bob.greet((p) => { p.greeting = "hi"; }).promise();
  expect("pipelined object", hi.text, "hi from bob");
  // Handed back: the server finds its own object.
  const back = await lobby.isMine((p) => { p.greeter = alice; }).promise();
  expect("own object handed back", back.mine, true);
  expect("own object's name", back.name, "alice");
  // One of ours instead: the server calls it.
  const ours = new Greeter.Server(new GreeterImpl()).client();
  const notMine = await lobby.isMine((p) => { p.greeter = ours; }).promise();
  expect("the client's object", notMine.mine, false);
  expect("the client's object called by the server", notMine.name, "who? from javascript");
});
