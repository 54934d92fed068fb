// The segments console: pages drawn from the JSON API of `segments serve`.
// No framework and no build step; DOM built with textContent only.
"use strict";

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (k === "checked" || k === "selected" || k === "disabled" || k === "hidden" || k === "multiple") el[k] = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel, root) => (root || document).querySelector(sel);

// Replace the children of an element (leaving out null, false, undefined).
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}
const fmtInt = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-GB"));
const fmtWhen = (t) => (t ? new Date(t).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" }) : "—");
const fmtDate = (t) => (t ? new Date(t).toLocaleDateString("en-GB", { dateStyle: "medium" }) : "—");
const fmtMs = (ms) => (ms === null || ms === undefined ? "—" : ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`);
const STATUS = { up_to_date: "Up to date", late: "Late", computing: "Computing", failed: "Failed", paused: "Paused" };

const session = { csrf: null, user: null, role: null };

class ApiError extends Error {
  constructor(status, detail) {
    super(detail.message || `HTTP ${status}`);
    this.status = status;
    this.code = detail.code;
    this.path = detail.path;
  }
}

async function api(method, path, body, query) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && session.csrf) headers["x-csrf-token"] = session.csrf;
  const qs = query ? "?" + new URLSearchParams(query).toString() : "";
  const resp = await fetch("/api" + path + qs, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401 && path !== "/login") {
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new ApiError(401, { message: "Please log in." });
  }
  const type = resp.headers.get("content-type") || "";
  const data = type.includes("json") ? await resp.json() : await resp.blob();
  if (!resp.ok && !(resp.status === 422 && data && data.run)) {
    throw new ApiError(resp.status, (data && data.error) || { message: `HTTP ${resp.status}` });
  }
  return data;
}

function flash(message, kind) {
  const box = $("#flash");
  box.replaceChildren(
    h("div", { class: `notice ${kind || "ok"}` }, h("span", {}, message),
      h("button", { type: "button", class: "link", "aria-label": "Dismiss", onclick: () => box.replaceChildren() }, "×")));
}

function failure(e) {
  flash(e.message || String(e), "error");
}

// A modal question: a message, optionally a text input; resolves to the
// input's value (or true), or null when cancelled.
function ask({ title, message, input, ok, danger }) {
  const dlg = $("#dialog");
  $("#dialog-title").textContent = title;
  $("#dialog-message").textContent = message || "";
  const label = $("#dialog-label");
  const field = $("#dialog-input");
  label.hidden = input === undefined;
  if (input !== undefined) {
    $("#dialog-label-text").textContent = input.label;
    field.value = input.value || "";
  }
  const okButton = $("#dialog-ok");
  okButton.textContent = ok || "OK";
  okButton.className = danger ? "danger" : "primary";
  return new Promise((resolve) => {
    const done = (v) => {
      dlg.close();
      $("#dialog-cancel").onclick = null;
      $("#dialog-form").onsubmit = null;
      resolve(v);
    };
    $("#dialog-cancel").onclick = () => done(null);
    dlg.oncancel = () => done(null);
    $("#dialog-form").onsubmit = (ev) => {
      ev.preventDefault();
      done(input === undefined ? true : field.value.trim() || null);
    };
    dlg.showModal();
    (input === undefined ? okButton : field).focus();
  });
}

// Open a page of the console; a message shown now stays only when asked.
function go(path, keepFlash) {
  if (!keepFlash) $("#flash").replaceChildren();
  history.pushState({}, "", path);
  route();
}

function link(path, text, attrs) {
  return h("a", Object.assign({ href: path, onclick: (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    ev.preventDefault();
    go(path);
  } }, attrs || {}), text);
}

function badge(s) {
  return h("span", { class: `badge ${s.status}`, title: s.status === "failed" ? s.error || "failed" : undefined,
    "data-status": s.status }, STATUS[s.status] || s.status);
}

// ------------------------------------------------------- criteria in words

const EVENT_WORDS = {
  email_sent: "received an e-mail", email_open: "opened an e-mail", email_click: "clicked an e-mail",
  email_bounce: "bounced an e-mail", email_unsubscribe: "unsubscribed from e-mails", sms_sent: "received an SMS",
  sms_click: "clicked an SMS", sms_bounce: "bounced an SMS", form_submit: "submitted a form",
  web_visit: "visited the site", web_event: "did a web event", purchase: "purchased",
};
const OP_WORDS = {
  eq: "is", neq: "is not", in: "is one of", not_in: "is none of", starts_with: "starts with",
  not_starts_with: "does not start with", ends_with: "ends with", not_ends_with: "does not end with",
  contains: "contains", not_contains: "does not contain", is_empty: "is empty", is_not_empty: "is not empty",
  lt: "is less than", lte: "is at most", gt: "is more than", gte: "is at least", between: "is between",
  before: "is before", after: "is after", within_last: "is within the last", more_than_ago: "is more than",
  anniversary_within: "has its anniversary within", is_true: "is yes", is_false: "is no",
  contains_any: "contains any of", contains_all: "contains all of", contains_none: "contains none of",
};
const AGG_WORDS = { count: "number of events", sum: "sum of", avg: "average of", min: "smallest", max: "largest", first: "first event", last: "last event" };

function duration(d) {
  const m = /^(\d+)\s*([hdw])$/.exec(String(d).trim());
  if (!m) return String(d);
  const n = Number(m[1]);
  const unit = { h: "hour", d: "day", w: "week" }[m[2]];
  return `${n} ${unit}${n === 1 ? "" : "s"}`;
}

function valueWords(op, v) {
  if (v === undefined || v === null) return "";
  if (op === "between" && Array.isArray(v)) return `${v[0]} and ${v[1]}`;
  if (op === "within_last" || op === "anniversary_within") return duration(v);
  if (op === "more_than_ago") return `${duration(v)} ago`;
  if (Array.isArray(v)) return v.join(", ");
  return String(v);
}

function condWords(c) {
  const v = valueWords(c.op, c.value);
  return `${c.field} ${OP_WORDS[c.op] || c.op}${v ? " " + v : ""}`;
}

function windowWords(w) {
  if (!w) return "";
  if (typeof w === "string") return ` in the last ${duration(w)}`;
  const d = (x) => (/^\d+[hdw]$/.test(String(x)) ? `${duration(x)} ago` : x);
  if (w.after && w.before) return ` between ${d(w.after)} and ${d(w.before)}`;
  if (w.before) return ` more than ${d(w.before).replace(/ ago$/, "")} ago`.replace("more than " + w.before, "before " + w.before);
  if (w.after) return ` since ${d(w.after)}`;
  return "";
}

function behaviorWords(b) {
  const events = [].concat(b.event || []);
  let s = events.map((e) => EVENT_WORDS[e] || `did ${e}`).join(" or ");
  const ops = [].concat(b.operation || []);
  if (ops.length) s += ` (operation ${ops.join(", ")})`;
  for (const w of b.where || []) s += ` where ${condWords(w)}`;
  s += windowWords(b.within);
  const hv = b.having;
  if (hv && !(hv.agg === "count" && hv.op === "gte" && hv.value === 1)) {
    const what = hv.agg === "count" ? AGG_WORDS.count
      : ["first", "last"].includes(hv.agg) ? AGG_WORDS[hv.agg]
      : `${AGG_WORDS[hv.agg] || hv.agg} ${hv.field || "amount"}`;
    s += `, with ${what} ${OP_WORDS[hv.op] || hv.op} ${valueWords(hv.op, hv.value)}`.trimEnd();
  }
  return s;
}

// The definition as a sentence: nested groups in parentheses.
function words(c, nested) {
  if (!c || typeof c !== "object") return "";
  if ("all" in c || "any" in c) {
    const key = "all" in c ? "all" : "any";
    const parts = c[key].map((x) => words(x, true));
    if (!parts.length) return key === "all" ? "every contact" : "no contact";
    const joined = parts.join(key === "all" ? " AND " : " OR ");
    return nested && parts.length > 1 ? `(${joined})` : joined;
  }
  if ("not" in c) return `NOT ${words(c.not, true)}`;
  if ("field" in c) return condWords(c);
  if ("behavior" in c) return behaviorWords(c.behavior);
  if ("segment" in c) return `in segment ${c.segment}`;
  if ("import" in c) return `touched by import ${c.import}`;
  if ("sql" in c) return `SQL: ${c.sql}`;
  if ("query" in c) return `returned by the query ${c.query}`;
  return JSON.stringify(c);
}

// ------------------------------------------------------------ segments page

let refreshTimer = null;
let runSource = null;

function stopLive() {
  clearTimeout(refreshTimer);
  refreshTimer = null;
  if (runSource) runSource.close();
  runSource = null;
}

async function segmentsPage(app) {
  const params = new URLSearchParams(location.search);
  const state = { sort: params.get("sort") || "name", status: params.get("status") || "", selected: new Set() };
  const tbody = h("tbody");
  const overlapButton = h("button", { type: "button", id: "overlap-selected", disabled: true,
    onclick: () => go(`/overlap?segments=${Array.from(state.selected).map(encodeURIComponent).join(",")}`) }, "Overlap of selected");
  const selectionChanged = () => {
    overlapButton.disabled = state.selected.size < 2;
    overlapButton.textContent = state.selected.size ? `Overlap of selected (${state.selected.size})` : "Overlap of selected";
  };
  const filter = h("select", { id: "status-filter", onchange: () => { state.status = filter.value; keep(); load(); } },
    h("option", { value: "" }, "All statuses"),
    Object.entries(STATUS).map(([k, v]) => h("option", { value: k, selected: state.status === k }, v)));
  const bar = h("progress", { max: 1, value: 0, id: "run-progress" });
  const barText = h("span", { class: "muted", id: "run-text" });
  const progress = h("div", { class: "progress", hidden: true }, h("span", {}, "Nightly update:"), bar, barText);
  const updateAll = h("button", { type: "button", id: "update-all", onclick: startRun }, "Update all now");
  const heads = [
    [null, ""], ["name", "Name"], [null, "Kind"], ["status", "Status"], ["size", "Contacts", "num"], [null, "E-mail opt-ins", "num"],
    [null, "SMS opt-ins", "num"], ["computed", "Last computed"], [null, "Duration", "num"], [null, "Actions"],
  ].map(([key, label, cls]) => h("th", { class: cls, scope: "col" }, key
    ? h("button", { type: "button", class: "sort", "data-sort": key, "aria-sort": state.sort === key ? (key === "name" ? "ascending" : "descending") : undefined,
      onclick: () => { state.sort = key; keep(); load(); } }, label)
    : label));
  const summary = h("p", { class: "muted", id: "summary" });
  fill(app, 
    h("h1", {}, "Segments"),
    summary,
    h("div", { class: "toolbar" },
      h("label", {}, "Status", filter),
      h("span", { class: "grow" }),
      overlapButton,
      updateAll,
      h("a", { class: "button primary", href: "/new", onclick: (ev) => { ev.preventDefault(); go("/new"); } }, "New segment")),
    progress,
    h("div", { class: "table-wrap" }, h("table", { id: "segments" }, h("thead", {}, h("tr", {}, heads)), tbody)));

  function keep() {
    const q = new URLSearchParams();
    if (state.sort !== "name") q.set("sort", state.sort);
    if (state.status) q.set("status", state.status);
    history.replaceState({}, "", "/" + (q.toString() ? "?" + q : ""));
    for (const b of app.querySelectorAll("th button.sort")) {
      if (b.dataset.sort === state.sort) b.setAttribute("aria-sort", state.sort === "name" ? "ascending" : "descending");
      else b.removeAttribute("aria-sort");
    }
  }

  async function act(s, what, fn) {
    try {
      await fn();
      flash(`${s.name}: ${what}.`);
    } catch (e) {
      failure(e);
    }
    load();
  }

  function row(s) {
    const id = encodeURIComponent(s.id);
    const paused = s.status === "paused";
    return h("tr", { "data-id": s.id },
      h("td", {}, h("input", { type: "checkbox", class: "pick", "aria-label": `Select ${s.name}`, checked: state.selected.has(s.id),
        onchange: (ev) => { if (ev.target.checked) state.selected.add(s.id); else state.selected.delete(s.id); selectionChanged(); } })),
      h("td", {}, link(`/segments/${id}`, s.name)),
      h("td", { class: "kind" }, s.kind),
      h("td", {}, badge(s)),
      h("td", { class: "num", "data-col": "contacts" }, fmtInt(s.contacts)),
      h("td", { class: "num", "data-col": "email_optins" }, fmtInt(s.email_optins)),
      h("td", { class: "num", "data-col": "sms_optins" }, fmtInt(s.sms_optins)),
      h("td", { class: "when" }, fmtWhen(s.computed_at)),
      h("td", { class: "num" }, fmtMs(s.duration_ms)),
      h("td", {}, h("div", { class: "actions" },
        s.kind === "dynamic" ? link(`/segments/${id}/edit`, "Edit", { class: "button", "data-action": "edit" }) : null,
        link(`/segments/${id}/profiles`, "See profiles", { class: "button", "data-action": "profiles" }),
        h("details", { class: "menu" }, h("summary", { "aria-label": `More actions on ${s.name}` }, "More ▾"),
          h("div", { class: "menu-items" },
            h("button", { type: "button", "data-action": "refresh", onclick: (ev) => {
              ev.target.disabled = true;
              act(s, "updated", () => api("POST", `/segments/${id}/refresh`));
            } }, "Update now"),
            s.kind === "dynamic" ? h("button", { type: "button", "data-action": "duplicate", onclick: async () => {
              const name = await ask({ title: "Duplicate segment", message: `A copy of “${s.name}”, computed at once.`,
                input: { label: "Name of the copy", value: `${s.name} (copy)` }, ok: "Duplicate" });
              if (name) act(s, `duplicated as “${name}”`, () => api("POST", `/segments/${id}/duplicate`, { name }));
            } }, "Duplicate") : null,
            h("button", { type: "button", "data-action": paused ? "resume" : "pause", onclick: () => paused
              ? act(s, "activated", () => api("POST", `/segments/${id}/resume`))
              : act(s, "paused", () => api("POST", `/segments/${id}/pause`)) }, paused ? "Activate" : "Pause"),
            h("button", { type: "button", class: "danger", "data-action": "delete", onclick: async () => {
              const yes = await ask({ title: "Delete segment", message: `Delete “${s.name}”? Its contacts stay in the base.`, ok: "Delete", danger: true });
              if (yes) act(s, "deleted", () => api("DELETE", `/segments/${id}`));
            } }, "Delete"))))));
  }

  async function load(timed) {
    clearTimeout(refreshTimer);
    // A menu open on a row stays open: the refresh waits for it.
    if (timed === true && tbody.querySelector("details[open]")) {
      refreshTimer = setTimeout(() => load(true), 1000);
      return;
    }
    let page;
    try {
      const q = { sort: state.sort, limit: 10000 };
      if (state.status) q.status = state.status;
      page = await api("GET", "/segments", undefined, q);
    } catch (e) {
      failure(e);
      return;
    }
    if (!app.isConnected) return;
    tbody.replaceChildren(...page.segments.map(row));
    if (!page.segments.length) tbody.replaceChildren(h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No segment.")));
    summary.textContent = `${page.total} segment${page.total === 1 ? "" : "s"}`;
    const busy = runSource || page.segments.some((s) => s.status === "computing");
    refreshTimer = setTimeout(() => load(true), busy ? 2000 : 30000);
  }

  function follow(run) {
    if (runSource) runSource.close();
    progress.hidden = false;
    updateAll.disabled = true;
    runSource = new EventSource(`/api/runs/${run}/events`);
    let last = 0;
    const show = (ev) => {
      const s = JSON.parse(ev.data);
      bar.max = Math.max(s.total, 1);
      bar.value = s.done;
      barText.textContent = `${s.phase}: ${s.done} / ${s.total} segments`;
      if (Date.now() - last > 700) { last = Date.now(); load(); }
      return s;
    };
    runSource.addEventListener("progress", show);
    runSource.addEventListener("end", (ev) => {
      const s = show(ev);
      runSource.close();
      runSource = null;
      updateAll.disabled = false;
      progress.hidden = true;
      if (s.state === "done") flash(`Every segment updated (${s.report.segments.length} segments in ${fmtMs(s.report.duration_ms)}).`);
      else flash(`The update ended with failures: ${s.error ? s.error.message : "see the failed segments"}.`, "error");
      load();
    });
  }

  async function startRun() {
    try {
      const started = await api("POST", "/recompute");
      follow(started.id);
    } catch (e) {
      failure(e);
    }
  }

  await load();
  try {
    const runs = await api("GET", "/runs");
    const running = runs.find((r) => !r.finished_at);
    if (running) follow(running.id);
  } catch (e) { /* progress is a convenience */ }
}

// -------------------------------------------------------------- one segment

function chart(points) {
  const W = 760, H = 240, L = 56, R = 12, T = 14, B = 42;
  const NS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Size over time, with entries and exits per computation" });
  if (!points.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "Not computed yet"));
    return svg;
  }
  const maxSize = Math.max(1, ...points.map((p) => p.size));
  const maxMove = Math.max(1, ...points.map((p) => Math.max(p.entries, p.exits)));
  const x = (i) => L + (points.length === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (points.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / maxSize);
  const mid = H - B;
  const bar = Math.max(2, Math.min(18, (W - L - R) / points.length / 3));
  svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: mid, y2: mid }));
  svg.append(s("text", { x: L - 6, y: y(maxSize) + 4, "text-anchor": "end" }, fmtInt(maxSize)));
  svg.append(s("text", { x: L - 6, y: mid + 4, "text-anchor": "end" }, "0"));
  points.forEach((p, i) => {
    const he = (p.entries / maxMove) * 40, hx = (p.exits / maxMove) * 40;
    svg.append(s("rect", { class: "entries", x: x(i) - bar, y: mid - he, width: bar, height: he }, undefined));
    svg.append(s("rect", { class: "exits", x: x(i), y: mid - hx, width: bar, height: hx }));
    const title = s("title", {}, `${fmtWhen(p.at)}: ${fmtInt(p.size)} contacts, +${fmtInt(p.entries)} / −${fmtInt(p.exits)}`);
    const dot = s("circle", { cx: x(i), cy: y(p.size), r: 3.5, fill: "#2f6fde" });
    dot.append(title);
    svg.append(dot);
  });
  svg.append(s("polyline", { class: "size", points: points.map((p, i) => `${x(i)},${y(p.size)}`).join(" ") }));
  const step = Math.max(1, Math.ceil(points.length / 6));
  points.forEach((p, i) => {
    if (i % step === 0 || i === points.length - 1) {
      svg.append(s("text", { x: x(i), y: H - B + 18, "text-anchor": "middle" }, fmtDate(p.at)));
    }
  });
  return svg;
}

async function segmentPage(app, id) {
  const key = encodeURIComponent(id);
  const [seg, history] = await Promise.all([api("GET", `/segments/${key}`), api("GET", `/segments/${key}/history`)]);
  document.title = `${seg.name} · Segments`;
  fill(app, 
    h("p", {}, link("/", "← Segments")),
    h("h1", {}, seg.name, " ", badge(seg)),
    seg.description ? h("p", { class: "muted" }, seg.description) : null,
    h("div", { class: "toolbar" },
      seg.kind === "dynamic" ? link(`/segments/${key}/edit`, "Edit", { class: "button" }) : null,
      link(`/segments/${key}/profiles`, "See profiles", { class: "button primary" })),
    seg.status === "failed" ? h("p", { class: "notice error" }, seg.error || "failed") : null,
    h("h2", {}, "Definition"),
    h("p", { class: "words", id: "definition-words" }, seg.criteria ? words(seg.criteria) : "A static list of contacts."),
    h("h2", {}, "Statistics"),
    h("div", { class: "stats" },
      h("div", { class: "stat" }, h("b", { id: "stat-contacts" }, fmtInt(seg.contacts)), h("span", {}, "contacts")),
      h("div", { class: "stat" }, h("b", {}, fmtInt(seg.email_optins)), h("span", {}, "e-mail opt-ins")),
      h("div", { class: "stat" }, h("b", {}, fmtInt(seg.sms_optins)), h("span", {}, "SMS opt-ins")),
      h("div", { class: "stat" }, h("b", {}, fmtWhen(seg.computed_at)), h("span", {}, "last computed")),
      h("div", { class: "stat" }, h("b", {}, fmtMs(seg.duration_ms)), h("span", {}, "duration"))),
    h("h2", {}, "Size over time"),
    h("div", { class: "chart" }, chart(history),
      h("div", { class: "legend" }, h("span", {}, h("i", { class: "sw-size" }), "size"),
        h("span", {}, h("i", { class: "sw-entries" }), "entries"), h("span", {}, h("i", { class: "sw-exits" }), "exits"))),
    h("h2", {}, "Last computations"),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", { class: "num" }, "Size"), h("th", { class: "num" }, "Entries"), h("th", { class: "num" }, "Exits"))),
      h("tbody", {}, seg.history.length ? seg.history.map((r) => h("tr", {},
        h("td", {}, fmtWhen(r.at)), h("td", { class: "num" }, fmtInt(r.size)),
        h("td", { class: "num" }, `+${fmtInt(r.entries)}`), h("td", { class: "num" }, `−${fmtInt(r.exits)}`)))
        : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "Not computed yet."))))));
}

// ----------------------------------------------------------------- profiles

async function profilesPage(app, id) {
  const key = encodeURIComponent(id);
  const state = { sort: "last_name", offset: 0, limit: 50 };
  const title = h("h1", {});
  const count = h("p", { class: "muted", id: "profiles-count" });
  const tbody = h("tbody");
  const range = h("span", { class: "muted" });
  const prev = h("button", { type: "button", onclick: () => { state.offset = Math.max(0, state.offset - state.limit); load(); } }, "← Previous");
  const next = h("button", { type: "button", onclick: () => { state.offset += state.limit; load(); } }, "Next →");
  const cols = [["last_name", "Name"], ["first_name", "First name"], ["email", "E-mail"], ["entered_at", "Entry date"], ["email_optin", "E-mail opt-in"], ["sms_optin", "SMS opt-in"]];
  const heads = cols.map(([k, label]) => h("th", { scope: "col" }, h("button", { type: "button", class: "sort", "data-sort": k, onclick: () => {
    state.sort = state.sort === k ? `-${k}` : k;
    state.offset = 0;
    load();
  } }, label)));
  const exportLink = h("a", { class: "button primary", id: "export-csv", href: `/api/segments/${key}/export?format=csv`, download: `${id}.csv` }, "Export CSV");
  fill(app, h("p", {}, link(`/segments/${key}`, "← Segment")), title, count,
    h("div", { class: "toolbar" }, h("span", { class: "grow" }), exportLink),
    h("div", { class: "table-wrap" }, h("table", { id: "profiles" }, h("thead", {}, h("tr", {}, heads)), tbody)),
    h("div", { class: "pager" }, prev, range, next));
  const tick = (v) => (v === true ? h("span", { class: "tick", "aria-label": "yes" }, "✓") : h("span", { class: "cross", "aria-label": v === false ? "no" : "empty" }, "✗"));
  async function load() {
    let page;
    try {
      page = await api("GET", `/segments/${key}/members`, undefined, { sort: state.sort, offset: state.offset, limit: state.limit });
    } catch (e) {
      failure(e);
      return;
    }
    document.title = `${page.name} · profiles`;
    title.textContent = page.name;
    count.textContent = `${fmtInt(page.total)} profile${page.total === 1 ? "" : "s"}`;
    for (const b of heads.map((th) => th.firstChild)) {
      const k = b.dataset.sort;
      if (state.sort === k) b.setAttribute("aria-sort", "ascending");
      else if (state.sort === `-${k}`) b.setAttribute("aria-sort", "descending");
      else b.removeAttribute("aria-sort");
    }
    tbody.replaceChildren(...page.rows.map((r) => h("tr", { "data-contact": r.contact_id },
      h("td", {}, r.last_name || ""), h("td", {}, r.first_name || ""), h("td", {}, r.email || ""),
      h("td", {}, fmtWhen(r.entered_at)), h("td", {}, tick(r.email_optin)), h("td", {}, tick(r.sms_optin)))));
    if (!page.rows.length) tbody.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No profile.")));
    const end = Math.min(page.total, state.offset + page.rows.length);
    range.textContent = page.total ? `${fmtInt(state.offset + 1)}–${fmtInt(end)} of ${fmtInt(page.total)}` : "";
    prev.disabled = state.offset === 0;
    next.disabled = end >= page.total;
  }
  await load();
}

// ---------------------------------------------------------- criteria builder

const KNOWN_EVENTS = Object.keys(EVENT_WORDS);
const OP_LABELS = Object.assign({}, OP_WORDS, { within_last: "within the last", more_than_ago: "more than … ago", anniversary_within: "anniversary within" });

function newField(schema) {
  const f = schema.fields[0];
  return { field: f ? f.name : "email", op: "is_not_empty" };
}

// A JSON path as errors name it: ["criteria", "all", 1, "not"] is
// `criteria.all[1].not`.
function pathText(p) {
  return p.map((k, i) => (typeof k === "number" ? `[${k}]` : i === 0 ? k : `.${k}`)).join("");
}

function getIn(v, p) {
  return p.reduce((x, k) => (x === undefined || x === null ? undefined : x[k]), v);
}

function setIn(v, p, x) {
  if (!p.length) return x;
  const [k, ...rest] = p;
  const copy = Array.isArray(v) ? v.slice() : Object.assign({}, v);
  copy[k] = setIn(v ? v[k] : undefined, rest, x);
  return copy;
}

const DURATION_OPS = ["within_last", "more_than_ago", "anniversary_within"];

// One condition or group at path `p` of the definition. Editors read the
// definition as it is now (`ctx.get`) and write through `ctx.set`: a
// structural change redraws the tree; typing in a value does not (`quiet`),
// so that the input keeps its focus.
function nodeEditor(ctx, p, remove) {
  const c = ctx.get(p);
  const negated = !!c && typeof c === "object" && "not" in c;
  const ip = negated ? p.concat("not") : p;
  const inner = ctx.get(ip);
  const wrap = h("div", { class: `node${negated ? " negated" : ""}`, "data-path": pathText(p) });
  const notBox = h("label", { class: "not-toggle", title: "Contacts for whom this does not hold" },
    h("input", { type: "checkbox", checked: negated, "aria-label": "NOT", onchange: (ev) => {
      const now = ctx.get(p);
      ctx.set(p, ev.target.checked ? { not: now } : now.not);
    } }), "NOT");
  const removeButton = remove ? h("button", { type: "button", class: "link remove", onclick: remove, "aria-label": "Remove" }, "Remove") : null;
  const err = h("div", { class: "err", "data-error-for": pathText(ip) });
  wrap.append(inner && ("all" in inner || "any" in inner)
    ? groupEditor(ctx, ip, notBox, removeButton, err)
    : condEditor(ctx, ip, notBox, removeButton, err));
  return wrap;
}

function groupEditor(ctx, p, notBox, removeButton, err) {
  const g = ctx.get(p);
  const key = "all" in g ? "all" : "any";
  const lp = p.concat(key);
  const items = g[key];
  const mode = h("select", { "aria-label": "Match", "data-role": "match", onchange: (ev) => ctx.set(p, { [ev.target.value]: ctx.get(lp) }) },
    h("option", { value: "all", selected: key === "all" }, "Match all (AND)"),
    h("option", { value: "any", selected: key === "any" }, "Match any (OR)"));
  const add = (v) => ctx.set(lp, ctx.get(lp).concat([v]));
  return h("div", { class: "group", "data-kind": key },
    h("div", { class: "group-head" }, mode, notBox, h("span", { class: "muted" }, items.length ? "" : key === "all" ? "(every contact)" : "(no contact)"), removeButton),
    err,
    items.map((_, i) => nodeEditor(ctx, lp.concat(i), () => ctx.set(lp, ctx.get(lp).filter((_, j) => j !== i)))),
    h("div", { class: "adders" },
      h("button", { type: "button", "data-add": "field", onclick: () => add(newField(ctx.schema)) }, "+ Field condition"),
      h("button", { type: "button", "data-add": "behavior", onclick: () => add({ behavior: { event: "email_open", within: "30d" } }) }, "+ Behaviour"),
      h("button", { type: "button", "data-add": "segment", onclick: () => add({ segment: (ctx.schema.segments.find((s) => s.id !== ctx.selfId) || {}).id || "all_contacts" }) }, "+ Segment"),
      h("button", { type: "button", "data-add": "import", disabled: !ctx.schema.imports.length, onclick: () => add({ import: ctx.schema.imports[ctx.schema.imports.length - 1].id }) }, "+ Import"),
      h("button", { type: "button", "data-add": "group", onclick: () => add({ [key === "all" ? "any" : "all"]: [] }) }, "+ Group")));
}

function select(label, options, value, onchange, attrs) {
  return h("label", {}, label, h("select", Object.assign({ onchange: (ev) => onchange(ev.target.value) }, attrs || {}),
    options.map(([v, text]) => h("option", { value: v, selected: String(v) === String(value) }, text))));
}

// The value inputs of an operator, following the field's type: `get`
// reads the condition now, `put(value)` writes its value quietly.
function valueEditor(field, c, put) {
  const op = c.op;
  const ty = field ? field.type : "text";
  if (["is_empty", "is_not_empty", "is_true", "is_false"].includes(op)) return null;
  if (DURATION_OPS.includes(op)) {
    const m = /^(\d+)([hdw])$/.exec(String(c.value || "")) || [null, "", "d"];
    const n = h("input", { type: "number", min: 0, value: m[1], class: "short", "aria-label": "Duration", "data-role": "value",
      oninput: () => put(n.value === "" ? undefined : `${n.value}${u.value}`) });
    const u = h("select", { "aria-label": "Unit", onchange: () => put(n.value === "" ? undefined : `${n.value}${u.value}`) },
      [["d", "days"], ["w", "weeks"], ["h", "hours"]].map(([v, t]) => h("option", { value: v, selected: m[2] === v }, t)));
    return [n, u];
  }
  const inputType = ty === "number" ? "number" : ty === "date" || ty === "timestamp" ? "date" : "text";
  const cast = (v) => (ty === "number" ? (v === "" ? null : Number(v)) : v);
  if (op === "between") {
    const v = Array.isArray(c.value) ? c.value : ["", ""];
    const a = h("input", { type: inputType, value: v[0] ?? "", "aria-label": "From", "data-role": "value", oninput: () => put([cast(a.value), cast(b.value)]) });
    const b = h("input", { type: inputType, value: v[1] ?? "", "aria-label": "To", "data-role": "value-2", oninput: () => put([cast(a.value), cast(b.value)]) });
    return [a, h("span", { class: "muted" }, "and"), b];
  }
  const many = ["in", "not_in", "contains_any", "contains_all", "contains_none"].includes(op);
  if (ty === "choice" && field.values && field.values.length) {
    if (many) {
      const chosen = new Set([].concat(c.value || []));
      const sel = h("select", { multiple: true, "aria-label": "Values", "data-role": "value", size: Math.min(5, field.values.length),
        onchange: () => put(Array.from(sel.selectedOptions).map((o) => o.value)) },
        field.values.map((v) => h("option", { value: v, selected: chosen.has(v) }, v)));
      return sel;
    }
    return h("select", { "aria-label": "Value", "data-role": "value", onchange: (ev) => put(ev.target.value) },
      h("option", { value: "" }, "—"), field.values.map((v) => h("option", { value: v, selected: c.value === v }, v)));
  }
  if (many) {
    const text = [].concat(c.value || []).join(", ");
    return h("input", { type: "text", value: text, placeholder: "a, b, c", "aria-label": "Values (comma-separated)", "data-role": "value",
      oninput: (ev) => put(ev.target.value.split(",").map((s) => s.trim()).filter(Boolean).map(cast)) });
  }
  return h("input", { type: inputType, value: c.value ?? "", "aria-label": "Value", "data-role": "value",
    oninput: (ev) => put(cast(ev.target.value)) });
}

// A field condition at path `p`, over contact fields or event columns.
function fieldCondEditor(ctx, fields, p) {
  const c = ctx.get(p);
  const field = fields.find((f) => f.name === c.field);
  const ops = (field ? field.operators : Object.keys(OP_LABELS)).slice();
  if (!ops.includes(c.op)) ops.push(c.op);
  const putValue = (v) => {
    const next = Object.assign({}, ctx.get(p));
    if (v === undefined) delete next.value;
    else next.value = v;
    ctx.set(p, next, true);
  };
  return h("div", { class: "cond-row" },
    select("Field", fields.map((f) => [f.name, f.name]).concat(field ? [] : [[c.field, c.field]]), c.field, (name) => {
      const f = fields.find((x) => x.name === name);
      const op = f && f.operators.includes(c.op) ? c.op : f ? f.operators.find((o) => o !== "is_empty") || f.operators[0] : c.op;
      ctx.set(p, { field: name, op });
    }, { "data-role": "field" }),
    select("Operator", ops.map((o) => [o, OP_LABELS[o] || o]), c.op, (op) => {
      const now = ctx.get(p);
      const next = { field: now.field, op };
      const shape = (o) => (o === "between" ? "pair" : DURATION_OPS.includes(o) ? "duration" : "one");
      if (now.value !== undefined && shape(op) === shape(now.op)) next.value = now.value;
      if (now.case_sensitive !== undefined) next.case_sensitive = now.case_sensitive;
      ctx.set(p, next);
    }, { "data-role": "op" }),
    valueEditor(field, c, putValue));
}

function condEditor(ctx, p, notBox, removeButton, err) {
  const c = ctx.get(p);
  const kind = ["field", "behavior", "segment", "import", "sql", "query"].find((k) => k in c) || "other";
  const labels = { field: "Field", behavior: "Behaviour", segment: "Segment", import: "Import", sql: "SQL", query: "Query", other: "Criterion" };
  const box = h("div", { class: "cond", "data-kind": kind },
    h("div", { class: "cond-row" }, h("span", { class: "kind-label" }, labels[kind]), notBox, removeButton));
  const schema = ctx.schema;
  if (kind === "field") {
    box.append(fieldCondEditor(ctx, schema.fields, p));
  } else if (kind === "behavior") {
    box.append(...behaviorEditor(ctx, p.concat("behavior")).filter(Boolean));
  } else if (kind === "segment") {
    const others = schema.segments.filter((s) => s.id !== ctx.selfId);
    const known = others.find((s) => s.id === c.segment || s.name === c.segment);
    box.append(h("div", { class: "cond-row" }, select("Member of", others.map((s) => [s.id, s.name]).concat(known ? [] : [[c.segment, c.segment]]),
      known ? known.id : c.segment, (v) => ctx.set(p, { segment: v }), { "data-role": "segment" })));
  } else if (kind === "import") {
    const known = schema.imports.find((i) => i.id === c.import || i.name === c.import);
    box.append(h("div", { class: "cond-row" }, select("Touched by import", schema.imports.map((i) => [i.id, `${i.name} (${i.kind})`]).concat(known ? [] : [[c.import, c.import]]),
      known ? known.id : c.import, (v) => ctx.set(p, { import: v }), { "data-role": "import" })));
  } else if (kind === "sql" || kind === "query") {
    box.append(h("textarea", { rows: 2, "aria-label": labels[kind], value: c[kind], oninput: (ev) => ctx.set(p, { [kind]: ev.target.value }, true) }));
  } else {
    box.append(h("code", {}, JSON.stringify(c)));
  }
  box.append(err);
  return box;
}

// A behaviour condition at path `bp` (the object under "behavior").
function behaviorEditor(ctx, bp) {
  const schema = ctx.schema;
  const b = ctx.get(bp);
  const put = (patch, quiet) => {
    const next = Object.assign({}, ctx.get(bp), patch);
    for (const k of Object.keys(next)) if (next[k] === undefined) delete next[k];
    ctx.set(bp, next, quiet);
  };
  const types = Array.from(new Set(schema.events.map((e) => e.type).concat(KNOWN_EVENTS)));
  const event = Array.isArray(b.event) ? b.event[0] : b.event;
  const info = schema.events.find((e) => e.type === event);
  const opList = `ops-${pathText(bp).replace(/[^a-z0-9]/gi, "-")}`;
  const operation = Array.isArray(b.operation) ? b.operation.join(", ") : b.operation || "";
  // The window: any time, in the last N days, between dates, since a date,
  // more than N days ago.
  const w = b.within;
  const wkind = !w ? "any" : typeof w === "string" ? "last" : w.after && w.before ? "between" : w.before ? "ago" : "since";
  const days = (x) => { const m = /^(\d+)d$/.exec(String(x || "")); return m ? m[1] : "30"; };
  let windowInputs = [];
  if (wkind === "last") {
    windowInputs = [h("input", { type: "number", min: 1, value: days(w), class: "short", "aria-label": "Days", "data-role": "within-days",
      oninput: (ev) => put({ within: `${ev.target.value || 1}d` }, true) }), h("span", { class: "muted" }, "days")];
  } else if (wkind === "ago") {
    windowInputs = [h("input", { type: "number", min: 1, value: days(w.before), class: "short", "aria-label": "Days ago",
      oninput: (ev) => put({ within: { before: `${ev.target.value || 1}d` } }, true) }), h("span", { class: "muted" }, "days ago")];
  } else if (wkind === "between") {
    const a = h("input", { type: "date", value: w.after, "aria-label": "From", oninput: () => put({ within: { after: a.value, before: z.value } }, true) });
    const z = h("input", { type: "date", value: w.before, "aria-label": "Until (excluded)", oninput: () => put({ within: { after: a.value, before: z.value } }, true) });
    windowInputs = [a, h("span", { class: "muted" }, "to"), z];
  } else if (wkind === "since") {
    windowInputs = [h("input", { type: "date", value: w.after, "aria-label": "Since", oninput: (ev) => put({ within: { after: ev.target.value } }, true) })];
  }
  const today = new Date().toISOString().slice(0, 10);
  const monthAgo = new Date(Date.now() - 30 * 864e5).toISOString().slice(0, 10);
  const hv = b.having || { agg: "count", op: "gte", value: 1 };
  const dated = ["first", "last"].includes(hv.agg);
  const numericCols = schema.event_columns.filter((c) => c.type === "number");
  const aggOps = dated ? ["before", "after", "between", "within_last", "more_than_ago", "is_empty", "is_not_empty"]
    : ["eq", "neq", "lt", "lte", "gt", "gte", "between", "is_empty", "is_not_empty"];
  const where = b.where || [];
  const wp = bp.concat("where");
  return [
    h("div", { class: "cond-row" },
      select("Event", types.map((t) => [t, EVENT_WORDS[t] ? `${t} — ${EVENT_WORDS[t]}` : t]), event, (v) => put({ event: v, operation: undefined }), { "data-role": "event" }),
      h("label", {}, "Operation (optional)", h("input", { type: "text", list: opList, value: operation, placeholder: "any", "data-role": "operation",
        oninput: (ev) => {
          const v = ev.target.value.split(",").map((s) => s.trim()).filter(Boolean);
          put({ operation: v.length === 0 ? undefined : v.length === 1 ? v[0] : v }, true);
        } })),
      h("datalist", { id: opList }, (info ? info.operations : []).map((o) => h("option", { value: o }))),
      select("When", [["any", "any time"], ["last", "in the last…"], ["between", "between dates"], ["since", "since a date"], ["ago", "more than … ago"]], wkind, (v) => put({
        within: v === "any" ? undefined : v === "last" ? "30d" : v === "ago" ? { before: "30d" } : v === "since" ? { after: monthAgo } : { after: monthAgo, before: today },
      }), { "data-role": "window" }),
      windowInputs),
    h("div", { class: "cond-row" },
      select("Having", Object.entries(AGG_WORDS), hv.agg, (agg) => put({ having: ["first", "last"].includes(agg)
        ? { agg, op: "within_last", value: "30d" }
        : { agg, op: "gte", value: 1, field: ["sum", "avg", "min", "max"].includes(agg) ? (numericCols[0] || {}).name : undefined } }), { "data-role": "agg" }),
      ["sum", "avg", "min", "max"].includes(hv.agg)
        ? select("Of", numericCols.map((c) => [c.name, c.name]), hv.field || "amount", (f) => put({ having: Object.assign({}, ctx.get(bp).having, { field: f }) }))
        : null,
      select("Is", aggOps.map((o) => [o, OP_LABELS[o]]), hv.op, (op) => {
        const now = ctx.get(bp).having || hv;
        const next = { agg: now.agg, op };
        if (now.field) next.field = now.field;
        if (op === "between") next.value = dated ? [monthAgo, today] : [0, 1];
        else if (DURATION_OPS.includes(op)) next.value = "30d";
        else if (!["is_empty", "is_not_empty"].includes(op)) next.value = dated ? today : typeof now.value === "number" ? now.value : 1;
        put({ having: next });
      }, { "data-role": "having-op" }),
      valueEditor({ type: dated ? "date" : "number" }, hv, (v) => {
        const now = Object.assign({}, ctx.get(bp).having || hv);
        if (v === undefined) delete now.value;
        else now.value = v;
        put({ having: now }, true);
      })),
    where.length ? h("div", { class: "sub" }, h("span", { class: "kind-label" }, "Where"),
      where.map((_, i) => h("div", { class: "node", "data-path": pathText(wp.concat(i)) },
        h("div", { class: "cond-row" }, fieldCondEditor(ctx, schema.event_columns, wp.concat(i)),
          h("button", { type: "button", class: "link", onclick: () => {
            const rest = ctx.get(wp).filter((_, j) => j !== i);
            put({ where: rest.length ? rest : undefined });
          } }, "Remove")),
        h("div", { class: "err", "data-error-for": pathText(wp.concat(i)) })))) : null,
    h("div", { class: "adders" }, h("button", { type: "button", "data-add": "where", onclick: () => {
      const col = schema.event_columns.find((c) => c.name === "url") || schema.event_columns.find((c) => c.type === "text") || { name: "url" };
      put({ where: (ctx.get(bp).where || []).concat([{ field: col.name, op: "contains", value: "" }]) });
    } }, "+ Where")),
  ];
}

async function builderPage(app, id) {
  const schema = await api("GET", "/schema");
  let def = { name: "", description: "", criteria: { all: [] } };
  if (id) {
    const seg = await api("GET", `/segments/${encodeURIComponent(id)}`);
    def = { name: seg.name, description: seg.description || "", criteria: seg.criteria || { all: [] } };
    if (!("all" in def.criteria || "any" in def.criteria)) def.criteria = { all: [def.criteria] };
    document.title = `Edit ${seg.name} · Segments`;
  } else {
    document.title = "New segment · Segments";
    const draft = new URLSearchParams(location.search).get("draft");
    if (draft) {
      try {
        const d = JSON.parse(draft);
        def = { name: d.name || "", description: "", criteria: d.criteria && ("all" in d.criteria || "any" in d.criteria) ? d.criteria : { all: [] } };
      } catch (e) { /* an unreadable draft: start empty */ }
    }
  }
  const ctx = {
    schema,
    selfId: id,
    get: (p) => getIn(def, p),
    set: (p, v, quiet) => {
      def = setIn(def, p, v);
      const c = def.criteria;
      if (!c || !("all" in c || "any" in c)) def.criteria = { all: c ? [c] : [] };
      changed(quiet);
    },
  };
  const tree = h("div", { id: "criteria" });
  const name = h("input", { id: "segment-name", value: def.name, required: true, autocomplete: "off", oninput: () => { def.name = name.value; nameErr.textContent = ""; } });
  const nameErr = h("div", { class: "err", "data-error-for": "name" });
  const desc = h("input", { id: "segment-description", value: def.description, autocomplete: "off", oninput: () => { def.description = desc.value; } });
  const countBox = h("b", { id: "live-count" }, "…");
  const countNote = h("span", { class: "muted", id: "live-note" });
  const sample = h("tbody");
  const json = h("textarea", { rows: 14, id: "definition-json", "aria-label": "Definition as JSON", spellcheck: "false" });
  const jsonErr = h("div", { class: "err" });
  const saveButton = h("button", { type: "submit", class: "primary", id: "save" }, id ? "Save changes" : "Save segment");
  const wordsBox = h("p", { class: "words", id: "builder-words" });

  // The tree (unless only a value changed), the JSON and the sentence.
  function draw(quiet) {
    if (!quiet) tree.replaceChildren(nodeEditor(ctx, ["criteria"], null));
    json.value = JSON.stringify(payload(), null, 2);
    wordsBox.textContent = words(def.criteria);
  }

  function payload() {
    const p = { name: def.name, criteria: def.criteria };
    if (def.description) p.description = def.description;
    return p;
  }

  function clearErrors() {
    for (const el of app.querySelectorAll(".err")) el.textContent = "";
    for (const el of app.querySelectorAll(".has-error")) el.classList.remove("has-error");
  }

  // An error of the API beside the condition its JSON path names.
  function placeError(e) {
    const path = e.path || "";
    let best = null;
    for (const el of app.querySelectorAll("[data-error-for]")) {
      const p = el.dataset.errorFor;
      if ((path === p || path.startsWith(p + ".") || path.startsWith(p + "[")) && (!best || p.length > best.dataset.errorFor.length)) best = el;
    }
    if (!best && path.startsWith("criteria")) best = tree.querySelector("[data-error-for]");
    if (!best) {
      flash(e.message, "error");
      return;
    }
    best.textContent = e.message;
    const node = best.closest(".node");
    if (node) node.classList.add("has-error");
  }

  let timer = null;
  let seq = 0;
  function changed(quiet) {
    draw(quiet);
    clearTimeout(timer);
    timer = setTimeout(preview, 350);
  }

  async function preview() {
    const mine = ++seq;
    countNote.textContent = "counting…";
    try {
      const p = await api("POST", "/preview", { name: def.name || "preview", criteria: def.criteria });
      if (mine !== seq) return;
      clearErrors();
      countBox.textContent = fmtInt(p.count);
      countNote.textContent = `contacts · ${fmtMs(p.duration_ms)}`;
      sample.replaceChildren(...p.profiles.map((r) => h("tr", {},
        h("td", {}, [r.first_name, r.last_name].filter(Boolean).join(" ") || `#${r.contact_id}`), h("td", {}, r.email || ""))));
    } catch (e) {
      if (mine !== seq) return;
      clearErrors();
      countBox.textContent = "—";
      countNote.textContent = "fix the definition to count";
      sample.replaceChildren();
      placeError(e);
    }
  }

  async function save(ev) {
    ev.preventDefault();
    clearErrors();
    if (!def.name.trim()) {
      nameErr.textContent = "Every segment has a name.";
      name.focus();
      return;
    }
    saveButton.disabled = true;
    try {
      const r = id
        ? await api("PUT", `/segments/${encodeURIComponent(id)}`, payload())
        : await api("POST", "/segments", payload());
      const failed = r.run && r.run.segments.find((s) => s.error);
      flash(failed ? `Saved, but the computation failed: ${failed.error}` : `${r.segment.name} saved: ${fmtInt(r.segment.contacts)} contacts.`, failed ? "error" : "ok");
      go(`/segments/${encodeURIComponent(r.segment.id)}`, true);
    } catch (e) {
      if (e.code === "conflict") {
        nameErr.textContent = e.message;
      } else {
        placeError(e);
      }
    } finally {
      saveButton.disabled = false;
    }
  }

  fill(app, 
    h("p", {}, link(id ? `/segments/${encodeURIComponent(id)}` : "/", id ? "← Segment" : "← Segments")),
    h("h1", {}, id ? "Edit segment" : "New segment"),
    h("form", { id: "builder", onsubmit: save, novalidate: true },
      h("div", { class: "builder" },
        h("div", {},
          h("div", { class: "toolbar" },
            h("label", { class: "grow" }, "Name", name, nameErr),
            h("label", { class: "grow" }, "Description (optional)", desc)),
          h("h2", {}, "Criteria"),
          tree,
          h("h2", {}, "In words"),
          wordsBox,
          h("details", { id: "json-view" }, h("summary", {}, "JSON"),
            h("p", { class: "muted" }, "The definition as the API and the command line take it. Paste one and apply it."),
            json, jsonErr,
            h("div", { class: "actions" }, h("button", { type: "button", id: "apply-json", onclick: () => {
              try {
                const v = JSON.parse(json.value);
                if (!v || typeof v !== "object" || !v.criteria) throw new Error("a definition has \"criteria\"");
                def = { name: v.name || def.name, description: v.description || "", criteria: "all" in v.criteria || "any" in v.criteria ? v.criteria : { all: [v.criteria] } };
                name.value = def.name;
                desc.value = def.description;
                jsonErr.textContent = "";
                changed();
              } catch (e) {
                jsonErr.textContent = `Not a definition: ${e.message}`;
              }
            } }, "Apply JSON")))),
        h("aside", { class: "side" },
          h("div", { class: "card count", "aria-live": "polite" }, h("div", {}, countBox), countNote),
          h("div", { class: "card" }, h("h2", { class: "flush" }, "Sample"),
            h("table", { class: "sample", id: "sample" }, sample)),
          h("div", { class: "actions" }, saveButton, link("/", "Cancel", { class: "button" }))))));
  draw();
  preview();
}

// ------------------------------------------------------------------ overlap

async function overlapPage(app) {
  const params = new URLSearchParams(location.search);
  const ids = (params.get("segments") || "").split(",").map((x) => x.trim()).filter(Boolean);
  const channel = params.get("reachable") || "";
  const o = await api("POST", "/overlap", channel ? { segments: ids, only_reachable: channel } : { segments: ids });
  document.title = "Overlap · Segments";
  const draft = (name, criteria) => `/new?draft=${encodeURIComponent(JSON.stringify({ name, criteria }))}`;
  const pick = select("Count", [["", "all contacts"], ["email", "contacts reachable by e-mail"], ["sms", "contacts reachable by SMS"]], channel, (v) => {
    const q = new URLSearchParams({ segments: ids.join(",") });
    if (v) q.set("reachable", v);
    go(`/overlap?${q}`);
  }, { id: "overlap-channel" });
  const segs = o.segments;
  const heat = (p) => (p === null ? "heat-0" : `heat-${Math.min(10, Math.round(p / 10))}`);
  const table = h("table", { id: "overlap", class: "matrix" },
    h("caption", { class: "muted" }, "Each cell: contacts in the row's segment and the column's, and their share of the row's segment."),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Segment"), h("th", { scope: "col", class: "num" }, "Size"),
      segs.map((s) => h("th", { scope: "col", class: "num" }, s.name)))),
    h("tbody", {}, segs.map((a, i) => h("tr", { "data-id": a.id },
      h("th", { scope: "row" }, link(`/segments/${encodeURIComponent(a.id)}`, a.name), " ",
        a.status === "up_to_date" ? null : badge(a)),
      h("td", { class: "num", "data-size": a.id }, fmtInt(a.size)),
      segs.map((b, j) => h("td", { class: `num cell ${i === j ? "diag" : heat(o.percent[i][j])}`, "data-row": a.id, "data-col": b.id },
        h("b", {}, fmtInt(o.matrix[i][j])),
        i === j ? null : h("span", { class: "pct" }, o.percent[i][j] === null ? "" : ` ${o.percent[i][j]}%`),
        i === j ? null : h("span", { class: "drafts" },
          link(draft(`${a.name} and ${b.name}`, { all: [{ segment: a.id }, { segment: b.id }] }), "A and B", { title: `New segment: ${a.name} and ${b.name}` }),
          link(draft(`${a.name} not ${b.name}`, { all: [{ segment: a.id }, { not: { segment: b.id } }] }), "A not B", { title: `New segment: ${a.name} and not ${b.name}` }))))))));
  const stale = segs.filter((s) => s.status === "failed" || s.status === "computing");
  fill(app,
    h("p", {}, link("/", "← Segments")),
    h("h1", {}, "Overlap"),
    h("div", { class: "toolbar" }, pick),
    stale.length ? h("p", { class: "notice error" }, `Counted from their last computation: ${stale.map((s) => `${s.name} (${STATUS[s.status]})`).join(", ")}.`) : null,
    h("div", { class: "table-wrap" }, table),
    h("p", { id: "overlap-totals" }, `In at least one: `, h("b", {}, fmtInt(o.union)), ` · in all: `, h("b", {}, fmtInt(o.intersection)),
      o.only_reachable ? ` · reachable by ${o.only_reachable === "email" ? "e-mail" : "SMS"} only` : ""));
}

// ----------------------------------------------------------------- audience

async function audiencePage(app) {
  const page = await api("GET", "/segments", undefined, { limit: 10000 });
  const boxes = (role) => h("div", { class: "checks", id: `${role}-list` }, page.segments.map((s) =>
    h("label", {}, h("input", { type: "checkbox", name: role, value: s.id }), s.name, h("span", { class: "muted" }, ` ${fmtInt(s.contacts)}`))));
  const chosen = (role) => Array.from(app.querySelectorAll(`input[name=${role}]:checked`)).map((i) => i.value);
  const result = h("p", { class: "count", id: "audience-count", "aria-live": "polite" });
  const download = h("a", { class: "button", hidden: true, id: "audience-download" }, "Download CSV");
  const body = () => ({ include: chosen("include"), exclude: chosen("exclude"), channel: app.querySelector("input[name=channel]:checked").value });
  fill(app, 
    h("h1", {}, "Audience"),
    h("p", { class: "muted" }, "The contacts of a send: in any included segment, in no excluded one, reachable on the channel (address or number, opted in, not a bad one). The segments involved are updated first."),
    h("div", { class: "builder" },
      h("div", { class: "toolbar top-aligned" },
        h("fieldset", { class: "card grow" }, h("legend", {}, "Include"), boxes("include")),
        h("fieldset", { class: "card grow" }, h("legend", {}, "Exclude"), boxes("exclude"))),
      h("aside", { class: "side" },
        h("fieldset", { class: "card" }, h("legend", {}, "Channel"),
          h("label", { class: "radio" }, h("input", { type: "radio", name: "channel", value: "email", checked: true }), "E-mail"),
          h("label", { class: "radio" }, h("input", { type: "radio", name: "channel", value: "sms" }), "SMS")),
        h("div", { class: "actions" },
          h("button", { type: "button", class: "primary", id: "audience-go", onclick: async () => {
            const b = body();
            if (!b.include.length) { result.textContent = "Include at least one segment."; return; }
            result.textContent = "Counting…";
            try {
              const r = await api("POST", "/audience", b);
              result.replaceChildren(h("b", {}, fmtInt(r.contacts)), " contacts");
            } catch (e) {
              result.textContent = "";
              failure(e);
            }
          } }, "Count"),
          h("button", { type: "button", id: "audience-export", onclick: async () => {
            const b = body();
            if (!b.include.length) { result.textContent = "Include at least one segment."; return; }
            try {
              const blob = await api("POST", "/audience", b, { format: "csv" });
              download.href = URL.createObjectURL(blob);
              download.download = "audience.csv";
              download.hidden = false;
              download.click();
            } catch (e) {
              failure(e);
            }
          } }, "Export CSV")),
        result, download)));
}

// -------------------------------------------------------------------- login

function loginPage(app) {
  const user = h("input", { id: "login-user", autocomplete: "username", value: "segments", required: true });
  const password = h("input", { id: "login-password", type: "password", autocomplete: "current-password", required: true });
  const err = h("p", { class: "err", id: "login-error", role: "alert" });
  fill(app, h("form", { class: "login card", id: "login", onsubmit: async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    try {
      await api("POST", "/login", { user: user.value, password: password.value });
      const next = new URLSearchParams(location.search).get("next");
      location.assign(next && next.startsWith("/") && !next.startsWith("//") ? next : "/");
    } catch (e) {
      err.textContent = e.message;
      password.select();
    }
  } },
  h("h1", {}, "Log in"),
  h("label", {}, "User", user),
  h("label", {}, "Password", password),
  err,
  h("button", { type: "submit", class: "primary" }, "Log in")));
  password.focus();
}

// ------------------------------------------------------------------- router

async function route() {
  stopLive();
  const app = $("#app");
  const path = location.pathname;
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("nav a")) {
    const nav = a.dataset.nav;
    const here = (nav === "segments" && (path === "/" || parts[0] === "segments") && parts[2] !== "edit")
      || (nav === "new" && path === "/new") || (nav === "audience" && path === "/audience");
    if (here) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (path === "/login") {
    $("#who").hidden = true;
    return loginPage(app);
  }
  if (!session.user) {
    try {
      const me = await api("GET", "/session");
      Object.assign(session, { csrf: me.csrf_token, user: me.user, role: me.role });
      $("#who-name").textContent = `${me.user} (${me.role})`;
      $("#who").hidden = false;
    } catch (e) {
      return;
    }
  }
  document.title = "Segments";
  try {
    if (path === "/") await segmentsPage(app);
    else if (path === "/new") await builderPage(app, null);
    else if (path === "/audience") await audiencePage(app);
    else if (path === "/overlap") await overlapPage(app);
    else if (parts[0] === "segments" && parts.length === 2) await segmentPage(app, parts[1]);
    else if (parts[0] === "segments" && parts[2] === "profiles") await profilesPage(app, parts[1]);
    else if (parts[0] === "segments" && parts[2] === "edit") await builderPage(app, parts[1]);
    else fill(app, h("h1", {}, "Not found"), h("p", {}, link("/", "Back to the segments")));
  } catch (e) {
    fill(app, h("h1", {}, e.status === 404 ? "Not found" : "Something went wrong"), h("p", { class: "err" }, e.message), h("p", {}, link("/", "Back to the segments")));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const a of document.querySelectorAll("nav a, a.brand")) {
    a.addEventListener("click", (ev) => {
      if (ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
      ev.preventDefault();
      $("#flash").replaceChildren();
      go(a.getAttribute("href"));
    });
  }
  $("#logout").addEventListener("click", async () => {
    try { await api("POST", "/logout"); } catch (e) { /* gone anyway */ }
    location.assign("/login");
  });
  window.addEventListener("popstate", route);
  route();
});
