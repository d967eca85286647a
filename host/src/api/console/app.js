// The redstage console: one page per question an operator asks first
// (what runs, what is stuck and since when, what each participant and store
// is), drawn from the same HTTP API and token as any client. No library and
// no build step: served as written, from the binary, with no other origin.
"use strict";

const POLL_MS = 2000;          // the overview's scrape of /metrics
const HISTORY_POINTS = 90;     // 3 minutes of points at POLL_MS
const LIST_LIMIT = 200;        // rows asked of a listing per page

// --- DOM and HTTP helpers -------------------------------------------------

// h("td", {class: "num"}, "3"): an element; strings become text, never HTML.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

const token = () => sessionStorage.getItem("redstage-token") || "";

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (token()) headers.authorization = `Bearer ${token()}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* metrics are text */ }
  if (!response.ok) {
    const e = (json && json.error) || {};
    throw new ApiError(response.status, e.code || `http_${response.status}`, e.message || text.slice(0, 300));
  }
  return json === null ? text : json;
}

function errorBox(e) {
  const hint = e.status === 401 ? " Enter a token with the read scope above."
    : e.status === 403 ? " This token lacks the scope this needs." : "";
  return h("div", { class: "error", "data-error": e.code || "error" }, String(e.message || e), hint);
}

const ms = (n) => (n === null || n === undefined ? "-" : n < 1000 ? `${n} ms` : n < 120000 ? `${(n / 1000).toFixed(1)} s` : `${Math.round(n / 60000)} min`);
const when = (t) => (t ? new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "-");
const short = (digest) => (digest || "").replace(/^sha256:/, "").slice(0, 12);
const badge = (text) => h("span", { class: `badge ${text}` }, text);
const txnLink = (id) => h("a", { href: `#/transaction/${encodeURIComponent(id)}`, class: "mono" }, id);

function table(headers, rows, empty) {
  if (!rows.length) return h("div", { class: "empty" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.endsWith(" ") ? "num" : null }, x.trim())))),
    h("tbody", {}, rows));
}

// --- Metrics: parsed from /metrics, kept as a short history ---------------

// Prometheus text to [{name, labels, value}].
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\(.)/g, "$1");
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

const sum = (samples, name, filter = () => true) =>
  samples.filter((s) => s.name === name && filter(s.labels)).reduce((a, s) => a + s.value, 0);

// The q-quantile of the observations between two scrapes of a histogram,
// interpolated within its bucket (as Prometheus' histogram_quantile).
function quantile(q, before, after, name) {
  const buckets = (samples) => samples.filter((s) => s.name === `${name}_bucket`)
    .map((s) => [s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), s.value]).sort((a, b) => a[0] - b[0]);
  const b0 = new Map(buckets(before)), b1 = buckets(after);
  const counts = b1.map(([le, v]) => [le, v - (b0.get(le) || 0)]);
  const total = counts.length ? counts[counts.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (const [le, count] of counts) {
    if (count >= rank) {
      if (le === Infinity) return lower;
      return lower + (le - lower) * ((rank - below) / Math.max(count - below, 1e-9));
    }
    lower = le; below = count;
  }
  return lower;
}

const history = { scrapes: [], points: [] };

async function scrape() {
  const samples = parseMetrics(await api("GET", "/metrics"));
  const now = Date.now();
  const last = history.scrapes[history.scrapes.length - 1];
  history.scrapes.push({ at: now, samples });
  if (history.scrapes.length > 2) history.scrapes.shift();
  if (!last) return samples;
  const dt = (now - last.at) / 1000;
  const rate = (name, filter) => Math.max(0, (sum(samples, name, filter) - sum(last.samples, name, filter)) / dt);
  const codes = new Set(samples.filter((s) => s.name === "redstage_transactions_total" && s.labels.status === "aborted").map((s) => s.labels.code));
  const aborts = {};
  for (const code of codes) aborts[code] = rate("redstage_transactions_total", (l) => l.status === "aborted" && l.code === code);
  history.points.push({
    at: now,
    committed: rate("redstage_transactions_total", (l) => l.status === "committed"),
    aborted: rate("redstage_transactions_total", (l) => l.status === "aborted"),
    aborts,
    giveUps: aborts.conflict || 0,
    errors: rate("redstage_transaction_errors_total"),
    p50: quantile(0.5, last.samples, samples, "redstage_transaction_duration_seconds"),
    p99: quantile(0.99, last.samples, samples, "redstage_transaction_duration_seconds"),
  });
  if (history.points.length > HISTORY_POINTS) history.points.shift();
  return samples;
}

const COLORS = ["#2f5fb3", "#b3261e", "#1f7a3d", "#a35a00", "#7a3db3", "#00838f", "#5d6776"];

// A line chart of [{name, values: [number|null]}] over the history's times.
function chart(title, series, unit) {
  const width = 400, height = 150, pad = 28;
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && Number.isFinite(v));
  const top = (Math.max(0, ...all) || 1) * 1.1;
  const n = Math.max(2, history.points.length);
  const x = (i) => pad + (i * (width - pad - 4)) / (n - 1);
  const y = (v) => height - 16 - (v / top) * (height - 26);
  const plot = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  for (const f of [0, 0.5, 1]) {
    plot.append(svg("line", { x1: pad, x2: width, y1: y(top * f / 1.1), y2: y(top * f / 1.1), stroke: "#e3e7ed" }));
    const label = svg("text", { x: 2, y: y(top * f / 1.1) + 4, "font-size": 10, fill: "#5d6776" });
    label.textContent = fmt(top * f / 1.1, unit);
    plot.append(label);
  }
  series.forEach((s, k) => {
    const pts = s.values.map((v, i) => (v === null ? null : `${x(i)},${y(v)}`)).filter(Boolean);
    if (pts.length) plot.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: COLORS[k % COLORS.length], "stroke-width": 1.8 }));
  });
  const legend = h("div", { class: "legend" }, series.map((s, k) => {
    const last = [...s.values].reverse().find((v) => v !== null);
    return h("span", { style: `--c:${COLORS[k % COLORS.length]}` }, `${s.name} ${last === undefined ? "-" : fmt(last, unit)}`);
  }));
  return h("div", { class: "chart", "data-chart": title }, h("h3", {}, title), plot, legend);
}

function fmt(v, unit) {
  if (unit === "s") return v >= 1 ? `${v.toFixed(2)} s` : `${(v * 1000).toFixed(v < 0.01 ? 2 : 1)} ms`;
  return `${v >= 100 ? Math.round(v) : v.toFixed(1)}${unit}`;
}

// --- Pages ------------------------------------------------------------------

const pages = {};
let poller = null;

pages.overview = async (main) => {
  const render = (samples) => {
    const points = history.points;
    const col = (f) => points.map(f);
    const codes = [...new Set(points.flatMap((p) => Object.keys(p.aborts)))];
    const expired = sum(samples, "redstage_locks_expired");
    main.replaceChildren(
      h("h1", {}, "Overview"),
      h("p", { class: "lead" }, `This host's own metrics, scraped every ${POLL_MS / 1000} s (rates per second since the previous scrape).`),
      h("div", { class: "cards" },
        card("committed", sum(samples, "redstage_transactions_total", (l) => l.status === "committed")),
        card("aborted", sum(samples, "redstage_transactions_total", (l) => l.status === "aborted")),
        card("given up (conflict)", sum(samples, "redstage_transactions_total", (l) => l.code === "conflict")),
        card("errors", sum(samples, "redstage_transaction_errors_total")),
        card("locks held", sum(samples, "redstage_locks")),
        h("a", { href: "#/in-doubt", class: "card", style: "text-decoration:none;color:inherit" },
          h("div", { class: `value ${expired ? "bad" : ""}` }, expired), h("div", { class: "label" }, "locks past their lease (in doubt)"))),
      h("div", { class: "charts" },
        chart("Throughput", [{ name: "committed/s", values: col((p) => p.committed) }, { name: "aborted/s", values: col((p) => p.aborted) }], "/s"),
        chart("Latency, request to decision", [{ name: "p50", values: col((p) => p.p50) }, { name: "p99", values: col((p) => p.p99) }], "s"),
        chart("Aborts by code", codes.length ? codes.map((c) => ({ name: c, values: col((p) => p.aborts[c] || 0) })) : [{ name: "none", values: col(() => 0) }], "/s"),
        chart("Give-ups and errors", [{ name: "conflict/s", values: col((p) => p.giveUps) }, { name: "errors/s", values: col((p) => p.errors) }], "/s")));
    main.dataset.loaded = String(points.length);
  };
  const tick = async () => {
    try { render(await scrape()); } catch (e) { main.replaceChildren(h("h1", {}, "Overview"), errorBox(e)); }
  };
  await tick();
  poller = setInterval(tick, POLL_MS);
};

const card = (label, value) => h("div", { class: "card" }, h("div", { class: "value" }, value), h("div", { class: "label" }, label));

pages["in-doubt"] = async (main) => {
  main.append(h("h1", {}, "Transactions in doubt"),
    h("p", { class: "lead" }, "What holds locks: transactions with no decision yet (running now, or left by a host that died: past their lease, recovery rolls them back), and committed ones some store has not applied yet (whoever meets their locks rolls them forward). Resolve finishes one now."));
  const [doubt, decided] = await Promise.all([
    api("GET", `/v1/transactions?state=in_doubt&limit=${LIST_LIMIT}`),
    api("GET", `/v1/transactions?state=committed&limit=${LIST_LIMIT}`),
  ]);
  const applying = decided.transactions.filter((t) => t.applying);
  main.append(h("h2", {}, "No decision"), stuckTable(doubt, doubt.transactions, "Nothing is in doubt.", "in_doubt"),
    h("h2", {}, "Committed, not yet applied on every store"), stuckTable(decided, applying, "Every committed transaction is applied.", "applying"));
};

function stuckTable(page, transactions, empty, kind) {
  const rows = transactions.map((t) => {
    const row = h("tr", { "data-txn": t.id, "data-kind": kind },
      h("td", {}, txnLink(t.id)),
      h("td", { class: "num" }, ms(t.age_ms)),
      h("td", { class: `num ${t.lease_left_ms !== undefined && t.lease_left_ms <= 0 ? "bad" : ""}` }, t.lease_left_ms === undefined ? "-" : t.lease_left_ms <= 0 ? `over ${ms(-t.lease_left_ms)} ago` : ms(t.lease_left_ms)),
      h("td", {}, t.primary || "-"),
      h("td", {}, t.stores.join(", ")),
      h("td", {}, t.participants.join(", ")),
      h("td", {}, h("button", { "data-action": "resolve", onclick: () => confirmResolve(row, t.id, 7) }, "Resolve…")));
    return row;
  });
  const shown = table(["id", "age ", "lease left ", "primary", "stores", "participants", ""], rows, empty);
  return page.next_cursor ? h("div", {}, shown, h("p", { class: "lead" }, `Showing the first ${rows.length}; more exist.`)) : shown;
}

// A confirmation row under `row` saying what resolving will do, then the
// resolution itself.
function confirmResolve(row, id, span) {
  const next = row.nextElementSibling;
  if (next && next.dataset.confirm) { next.remove(); return; }
  const cell = h("td", { colspan: span });
  const panel = h("tr", { "data-confirm": id }, cell);
  cell.append(resolvePanel(id, () => panel.remove()));
  row.after(panel);
}

function resolvePanel(id, cancel) {
  const box = h("div", { class: "confirm", "data-resolve": id },
    h("strong", {}, `Resolve ${id} now?`),
    h("p", {}, "If its decision record says committed, its writes are applied on every store it locked (roll forward). If it has no decision, it is fenced first: recorded as aborted with code recovered, so that it can never commit, even if its host is alive; then its locks are released and nothing it staged is applied (roll back). Either way no store is left half-applied."));
  const go = h("button", { class: "danger", "data-action": "resolve-now", onclick: async () => {
    go.disabled = true;
    try {
      const r = await api("POST", `/v1/transactions/${encodeURIComponent(id)}/resolve`);
      box.replaceWith(resolution(r));
    } catch (e) { box.append(errorBox(e)); go.disabled = false; }
  } }, "Resolve now");
  box.append(go, " ", h("button", { onclick: cancel }, "Cancel"));
  return box;
}

function resolution(r) {
  const decided = r.decision ? `${r.decision}${r.made ? " (decided here: fenced)" : " (found)"}` : "read-only: nothing to decide";
  return h("div", { class: "result", "data-resolved": r.id, "data-decision": r.decision || "" },
    h("strong", {}, `Resolved ${r.id}: ${decided}`),
    h("ul", {}, r.stores.length ? r.stores.map((s) => h("li", {}, `${s.store}: ${s.action}${s.error ? ` (${s.error})` : ""}`)) : h("li", {}, "nothing was left to do")),
    h("div", { class: "lead" }, `by ${r.by}`));
}

pages.locks = async (main, store) => {
  main.append(h("h1", {}, "Locks"),
    h("p", { class: "lead" }, "Locked keys on each store: the mode, the transaction holding the lock and how long its lease has left."));
  const stores = await knownStores();
  const select = h("select", { id: "lock-store", onchange: () => { location.hash = `#/locks/${select.value}`; } },
    h("option", { value: "" }, "every store"), stores.map((s) => h("option", { value: s, selected: s === store }, s)));
  main.append(h("form", { class: "inline" }, h("label", {}, "Store ", select)));
  const page = await api("GET", `/v1/locks?limit=${LIST_LIMIT}${store ? `&store=${encodeURIComponent(store)}` : ""}`);
  const rows = page.locks.map((l) => h("tr", { "data-lock": l.key },
    h("td", {}, l.store), h("td", { class: "mono" }, l.key), h("td", {}, l.participant || "-"), h("td", {}, l.mode),
    h("td", {}, txnLink(l.txn)), h("td", { class: `num ${l.lease_left_ms <= 0 ? "bad" : ""}` }, ms(l.lease_left_ms)),
    h("td", {}, l.waited ? "yes" : "")));
  main.append(table(["store", "key", "participant", "mode", "held by", "lease left ", "waited for"], rows, "No key is locked."));
  if (page.next_cursor) main.append(h("p", { class: "lead" }, `Showing the first ${rows.length}; more exist.`));
};

pages.transaction = async (main, id) => {
  main.append(h("h1", {}, "Transaction"));
  const input = h("input", { id: "lookup-id", placeholder: "transaction id", value: id || "" });
  main.append(h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); location.hash = `#/transaction/${encodeURIComponent(input.value.trim())}`; } },
    input, h("button", { type: "submit" }, "Look up")));
  if (!id) return;
  let found;
  try { found = await api("GET", `/v1/transactions/${encodeURIComponent(id)}`); } catch (e) {
    main.append(e.code === "unknown_transaction" ? h("div", { class: "empty" }, `Nothing is known of ${id}: it never ran, was read-only, or is past its retention.`) : errorBox(e));
    return;
  }
  const rows = [["id", h("span", { class: "mono" }, found.id)], ["status", badge(found.status)]];
  if (found.abort) rows.push(["abort", `step ${found.abort.step} (${found.abort.participant}): ${found.abort.code}: ${found.abort.message}`]);
  main.append(h("table", { "data-detail": found.id, "data-status": found.status }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))))));
  const locks = (await api("GET", `/v1/locks?limit=1000`)).locks.filter((l) => l.txn === found.id);
  main.append(h("h2", {}, "Locks it holds"),
    table(["store", "key", "mode", "lease left "], locks.map((l) => h("tr", {}, h("td", {}, l.store), h("td", { class: "mono" }, l.key), h("td", {}, l.mode), h("td", { class: "num" }, ms(l.lease_left_ms)))), "None."));
  if (found.status === "in_doubt") main.append(resolvePanel(found.id, () => { location.hash = "#/in-doubt"; }));
};

pages.participants = async (main, name) => {
  if (name) return participant(main, name);
  main.append(h("h1", {}, "Participants"), h("p", { class: "lead" }, "The components running now: where their keys live and which version is current."));
  const listing = await api("GET", "/v1/participants");
  const rows = listing.participants.map((p) => h("tr", { "data-participant": p.name },
    h("td", {}, h("a", { href: `#/participants/${encodeURIComponent(p.name)}` }, p.name)),
    h("td", {}, p.store), h("td", { class: "mono" }, p.prefix), h("td", {}, p.contract),
    h("td", { class: "mono", title: p.version.digest }, short(p.version.digest)), h("td", {}, p.version.source), h("td", {}, when(p.version.loaded_at_ms))));
  main.append(table(["name", "store", "prefix", "contract", "version", "source", "loaded"], rows, "No participant."));
  const errors = Object.entries(listing.errors || {});
  if (errors.length) main.append(h("h2", {}, "Deploys that do not load"), table(["name", "error"], errors.map(([n, e]) => h("tr", {}, h("td", {}, n), h("td", {}, e))), ""));
};

async function participant(main, name) {
  const p = await api("GET", `/v1/participants/${encodeURIComponent(name)}`);
  main.append(h("h1", { "data-participant": p.name }, `Participant ${p.name}`),
    h("table", {}, h("tbody", {}, [["store", p.store], ["prefix", p.prefix], ["contract", p.contract], ["current version", h("span", { class: "mono", "data-current": p.version.digest }, p.version.digest)], ["loaded", when(p.version.loaded_at_ms)], ["source", p.version.source]]
      .map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))))));
  if (p.error) main.append(h("div", { class: "error" }, `Its deploy folder entry does not load: ${p.error}`));
  main.append(h("h2", {}, "Versions kept"),
    table(["version", "store", "prefix", "bytes ", ""], (p.versions || []).map((v) => h("tr", { "data-version": v.digest },
      h("td", { class: "mono" }, short(v.digest)), h("td", {}, v.store), h("td", { class: "mono" }, v.prefix), h("td", { class: "num" }, v.component_bytes),
      h("td", {}, v.current ? badge("current") : ""))), "None kept (participants of the config file are changed in the file)."));
  const previous = (p.versions || []).find((v) => !v.current);
  if (previous) {
    const box = h("div", { class: "confirm" });
    const go = h("button", { class: "danger", "data-action": "rollback-now", onclick: async () => {
      go.disabled = true;
      try { await api("POST", `/v1/participants/${encodeURIComponent(p.name)}/rollback`); route(); } catch (e) { box.append(errorBox(e)); go.disabled = false; }
    } }, "Roll back now");
    box.append(h("strong", {}, "Roll back? "), `Makes version ${short(previous.digest)} (on ${previous.store}, prefix ${previous.prefix}) current again. Transactions running now finish on the version they started with; every one that starts afterwards runs ${short(previous.digest)}. `, go);
    main.append(box);
  }
  main.append(h("h2", {}, "History"),
    table(["when", "action", "version", "store", "by", "host"], (p.history || []).map((e) => h("tr", { "data-history": e.action },
      h("td", {}, when(e.at_ms)), h("td", {}, e.action), h("td", { class: "mono" }, short(e.digest)), h("td", {}, e.store), h("td", {}, e.by || "-"), h("td", {}, e.host))), "No deploy yet."));
}

// Store names: those participants live on and those /metrics reports.
async function knownStores() {
  const names = new Set();
  try { (await api("GET", "/v1/participants")).participants.forEach((p) => names.add(p.store)); } catch { /* read scope missing: metrics below */ }
  try { parseMetrics(await api("GET", "/metrics")).forEach((s) => s.labels.store && names.add(s.labels.store)); } catch { /* as above */ }
  return [...names].sort();
}

pages.stores = async (main) => {
  main.append(h("h1", {}, "Stores"),
    h("p", { class: "lead" }, "Each store must answer PING and keep every acknowledged write (appendonly yes with appendfsync always, or wait_replicas) and never evict; this host checks that at start and on every readiness probe."));
  const response = await fetch("/v1/ready");
  const ready = await response.json();
  const failing = new Map((ready.stores || []).map((s) => [s.store, s.error]));
  const samples = parseMetrics(await api("GET", "/metrics"));
  const stores = await knownStores();
  main.append(h("div", { class: "cards" }, h("div", { class: "card", "data-ready": ready.status }, h("div", { class: "value" }, badge(ready.status)), h("div", { class: "label" }, "GET /v1/ready"))));
  const rows = stores.map((s) => {
    const of = (l) => l.store === s;
    const error = failing.get(s);
    const health = ready.status === "draining" ? "draining" : error ? "failed" : "ready";
    return h("tr", { "data-store": s, "data-health": health },
      h("td", {}, s), h("td", {}, badge(health)),
      h("td", {}, error || (health === "ready" ? "answers PING; durability check passed" : "-")),
      h("td", { class: "num" }, sum(samples, "redstage_locks", of)),
      h("td", { class: `num ${sum(samples, "redstage_locks_expired", of) ? "bad" : ""}` }, sum(samples, "redstage_locks_expired", of)),
      h("td", { class: "num" }, sum(samples, "redstage_store_errors_total", (l) => of(l) && l.kind === "unavailable")),
      h("td", { class: "num" }, sum(samples, "redstage_store_errors_total", (l) => of(l) && l.kind === "protocol")));
  });
  main.append(table(["store", "health", "durability check", "locks ", "past lease ", "unavailable ", "protocol errors "], rows, "No store known."));
};

// --- Router -----------------------------------------------------------------

async function route() {
  clearInterval(poller);
  const [name, ...rest] = (location.hash.replace(/^#\/?/, "") || "overview").split("/");
  const page = pages[name] ? name : "overview";
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === page));
  const main = h("main", { id: "main", "data-page": page });
  document.getElementById("main").replaceWith(main);
  document.body.dataset.page = page;
  document.body.dataset.ready = "";
  try {
    await pages[page](main, rest.map(decodeURIComponent).join("/") || undefined);
  } catch (e) {
    main.append(errorBox(e));
  }
  document.getElementById("status").textContent = `${location.host} · ${token() ? "with a token" : "no token"} · ${new Date().toISOString()}`;
  document.body.dataset.ready = page;
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("token");
  input.value = token();
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("redstage-token", input.value.trim());
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});
