// Payments, written in JavaScript: the interface of the Rust example
// `examples/payments` (same inputs, outputs, keys and abort codes), built
// into a component of the world `redstage:participant/participant` by
// ComponentizeJS (./build.sh).
//
// | input                                                     | effect                                   |
// | --------------------------------------------------------- | ---------------------------------------- |
// | {"op":"deposit","account":"alice","amount":30}            | adds 30 to alice                         |
// | {"op":"withdraw","account":"alice","amount":30}           | takes 30, or aborts insufficient_funds   |
// | {"op":"transfer","from":"alice","to":"shop","amount":30}  | both, as two adjustments (escrow)        |
// | {"op":"transfer",...,"read":true}                         | the same, reading both balances          |
// | {"op":"balances","accounts":["alice","shop"]}             | nothing (reads only)                     |
//
// Balances are decimal strings under `balance:<account>` (missing is 0),
// computed as BigInt within the signed 64-bit range, as the Rust example's
// checked arithmetic does.

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

class Abort {
  constructor(code, message) {
    this.code = code;
    this.message = message;
  }
}

const badInput = (message) => new Abort("bad_input", message);

function parse(bytes) {
  let input;
  try {
    input = JSON.parse(decoder.decode(bytes));
  } catch (e) {
    throw badInput(`the input is not JSON: ${e.message}`);
  }
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    throw badInput("the input must be a JSON object with an `op`");
  }
  const fields = {
    deposit: ["account", "amount"],
    withdraw: ["account", "amount"],
    transfer: ["from", "to", "amount", "read"],
    balances: ["accounts"],
  }[input.op];
  if (!fields) {
    throw badInput(`unknown op ${JSON.stringify(input.op)}: expected deposit, withdraw, transfer or balances`);
  }
  for (const field of Object.keys(input)) {
    if (field !== "op" && !fields.includes(field)) {
      throw badInput(`unknown field \`${field}\` for op \`${input.op}\``);
    }
  }
  if (fields.includes("amount")) {
    if (!Number.isSafeInteger(input.amount) || input.amount <= 0) {
      throw badInput("`amount` must be a positive integer");
    }
  }
  if (input.op === "transfer" && input.from === input.to) {
    throw badInput(`\`from\` and \`to\` must differ (both are \`${input.from}\`)`);
  }
  if (input.op === "balances" && (!Array.isArray(input.accounts) || input.accounts.length === 0)) {
    throw badInput("`accounts` must list at least one account");
  }
  return input;
}

function balanceKey(account) {
  if (typeof account !== "string" || account.length === 0) {
    throw badInput("account names must not be empty");
  }
  return `balance:${account}`;
}

function checked(value) {
  if (value < I64_MIN || value > I64_MAX) {
    throw new Abort("overflow", "the result would leave the 64-bit range");
  }
  return value;
}

export function declare(bytes) {
  const input = parse(bytes);
  const access = { reads: [], writes: [], adjusts: [] };
  switch (input.op) {
    case "deposit":
    case "withdraw":
      access.writes.push(balanceKey(input.account));
      break;
    case "transfer": {
      const keys = [balanceKey(input.from), balanceKey(input.to)];
      (input.read ? access.writes : access.adjusts).push(...keys);
      break;
    }
    case "balances":
      access.reads.push(...input.accounts.map(balanceKey));
      break;
  }
  return access;
}

export function execute(bytes, snapshot) {
  const input = parse(bytes);
  const values = new Map(snapshot.map((entry) => [entry.key, entry.value]));
  const balances = new Map();
  const balance = (account) => {
    if (!balances.has(account)) {
      const value = values.get(balanceKey(account));
      const text = value === undefined ? "0" : decoder.decode(value);
      if (!/^-?[0-9]+$/.test(text)) {
        throw new Abort("not_an_integer", `\`${balanceKey(account)}\` holds ${JSON.stringify(text)}, not an integer`);
      }
      balances.set(account, checked(BigInt(text)));
    }
    return balances.get(account);
  };
  const credit = (account, amount) => balances.set(account, checked(balance(account) + BigInt(amount)));
  const debit = (account, amount) => {
    const has = balance(account);
    if (has < BigInt(amount)) {
      throw new Abort("insufficient_funds", `\`${account}\` has ${has}, cannot pay ${amount}`);
    }
    balances.set(account, has - BigInt(amount));
  };

  switch (input.op) {
    case "deposit":
      credit(input.account, input.amount);
      break;
    case "withdraw":
      debit(input.account, input.amount);
      break;
    case "transfer":
      if (!input.read) {
        return transfer(input.from, input.to, input.amount);
      }
      debit(input.from, input.amount);
      credit(input.to, input.amount);
      break;
    case "balances":
      input.accounts.forEach(balance);
      return { writes: [], output: json(balances) };
  }
  const writes = [...balances].map(([account, value]) => ({
    tag: "set",
    val: [balanceKey(account), encoder.encode(value.toString())],
  }));
  return { writes, output: json(balances) };
}

// A transfer as two adjustments: the payer never below 0.
function transfer(from, to, amount) {
  const adjust = (account, delta, lower, abort) => ({
    tag: "adjust",
    val: { key: balanceKey(account), delta: BigInt(delta), lower, upper: undefined, abort },
  });
  const writes = [
    adjust(from, -amount, 0n, new Abort("insufficient_funds", `\`${from}\` cannot pay ${amount}: the balance would go below 0`)),
    adjust(to, amount, undefined, new Abort("overflow", `\`${to}\` cannot hold ${amount} more`)),
  ];
  return { writes, output: encoder.encode(JSON.stringify({ amount, from, to })) };
}

// Balances by account, sorted as the Rust example's BTreeMap is, as JSON
// numbers (exact: JSON has no limit on digits).
function json(balances) {
  const entries = [...balances].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const body = entries.map(([account, value]) => `${JSON.stringify(account)}:${value}`).join(",");
  return encoder.encode(`{${body}}`);
}
