// lockgate console: one plain script, no build step. Every figure comes from the gateway's
// /admin/* JSON, fetched with the master key the user typed (kept in sessionStorage, so
// it dies with the tab). Nothing is shown, and nothing but the login form exists in the
// page's content, before a key the gateway accepts was entered.
"use strict";
(() => {
  const STORAGE = "lockgate.masterKey";
  const WINDOW_S = 60;
  const KEEP_SAMPLES = 150;
  const PALETTE = ["#0b5cad", "#c2410c", "#1a7f37", "#7c3aed", "#b42318", "#0e7490", "#57606a"];
  const PAGES = ["overview", "spend", "keys", "limits", "models", "mcp", "policies"];
  const REFRESH_MS = { overview: 2000, limits: 5000, models: 5000, mcp: 5000 };

  let masterKey = sessionStorage.getItem(STORAGE);
  let timer = null;
  let samples = [];
  let lastReadAt = 0;
  const charts = {};

  // -- small helpers ---------------------------------------------------------------------
  const $ = (selector) => document.querySelector(selector);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function usd(value) {
    if (value === null || value === undefined) return "–";
    const digits = Math.abs(value) >= 100 ? 2 : Math.abs(value) >= 1 ? 3 : 6;
    return "$" + value.toFixed(digits);
  }

  const number = (value, digits = 0) => (value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }));
  const percent = (value) => (value === null || Number.isNaN(value) ? "–" : (value * 100).toFixed(1) + "%");
  const ms = (seconds) => (seconds === null ? "–" : (seconds * 1000 < 10 ? (seconds * 1000).toFixed(2) : (seconds * 1000).toFixed(0)) + " ms");
  const when = (epoch) => (epoch ? new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–");

  function setStatus(text) {
    $("#status").textContent = text;
  }

  function fillTable(table, rows, empty) {
    const body = table.querySelector("tbody");
    body.replaceChildren();
    if (!rows.length) {
      const columns = table.querySelectorAll("thead th").length;
      body.append(el("tr", {}, el("td", { colspan: columns, class: "empty" }, empty)));
      return;
    }
    for (const row of rows) body.append(row);
  }

  // -- the admin API -----------------------------------------------------------------------
  class Refused extends Error {}

  async function api(path, options = {}) {
    const key = masterKey;
    const response = await fetch("../" + path, {
      ...options,
      cache: "no-store",
      headers: { Authorization: "Bearer " + key, ...(options.body ? { "Content-Type": "application/json" } : {}) },
    });
    // signed out while the answer was on its way: nothing of it is shown
    if (masterKey !== key) throw new Refused("signed out");
    if (response.status === 401 || response.status === 403) {
      signOut("The gateway refused the master key.");
      throw new Refused("refused");
    }
    const body = await response.json().catch(() => ({}));
    if (masterKey !== key) throw new Refused("signed out");
    if (!response.ok) throw new Error((body.error && body.error.message) || "HTTP " + response.status);
    return body;
  }

  // -- signing in and out ------------------------------------------------------------------------
  async function signIn(key) {
    const response = await fetch("../policies", { headers: { Authorization: "Bearer " + key }, cache: "no-store" }).catch(() => null);
    if (!response || !response.ok) {
      let message = "The gateway could not be reached.";
      if (response && (response.status === 401 || response.status === 403)) {
        message = "That is not the master key. The admin API needs the auth middleware with master_key_sha256.";
      } else if (response) {
        message = "The gateway answered " + response.status + ".";
      }
      sessionStorage.removeItem(STORAGE);
      $("#login-error").textContent = message;
      $("#master-key").focus();
      return;
    }
    masterKey = key;
    sessionStorage.setItem(STORAGE, key);
    $("#login").hidden = true;
    $("#app").hidden = false;
    $("#login-error").textContent = "";
    $("#master-key").value = "";
    route();
  }

  function signOut(message) {
    clearTimeout(timer);
    timer = null;
    masterKey = null;
    samples = [];
    sessionStorage.removeItem(STORAGE);
    for (const name of Object.keys(charts)) {
      charts[name].destroy();
      delete charts[name];
    }
    for (const body of document.querySelectorAll("#app tbody, #tiles, #limits, #models")) body.replaceChildren();
    $("#app").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
    $("#master-key").focus();
  }

  // -- pages ----------------------------------------------------------------------------------
  function currentPage() {
    const name = location.hash.slice(1);
    return PAGES.includes(name) ? name : "overview";
  }

  async function route() {
    if (!masterKey) return;
    clearTimeout(timer);
    const page = currentPage();
    for (const section of document.querySelectorAll("[data-page]")) section.hidden = section.dataset.page !== page;
    for (const link of document.querySelectorAll("[data-nav]")) {
      if (link.dataset.nav === page) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    await refresh(page);
  }

  async function refresh(page) {
    try {
      await LOADERS[page]();
      setStatus("Updated " + new Date().toLocaleTimeString("en-GB"));
    } catch (error) {
      if (error instanceof Refused) return;
      setStatus("Could not load: " + error.message);
    }
    if (masterKey && currentPage() === page && REFRESH_MS[page]) {
      timer = setTimeout(() => refresh(page), REFRESH_MS[page]);
    }
  }

  function chartWidth(container) {
    return Math.max(320, container.clientWidth - 8);
  }

  function drawChart(name, container, options, data) {
    if (charts[name] && charts[name].series.length === options.series.length) {
      charts[name].setData(data);
      return;
    }
    if (charts[name]) charts[name].destroy();
    container.replaceChildren();
    charts[name] = new uPlot({ width: chartWidth(container), height: 260, ...options }, data, container);
  }

  // -- overview -------------------------------------------------------------------------------
  function quantile(buckets, q) {
    // Prometheus's histogram_quantile over cumulative [le, count] pairs
    if (!buckets.length || buckets[buckets.length - 1][1] <= 0) return null;
    const rank = q * buckets[buckets.length - 1][1];
    let lower = 0, below = 0;
    for (const [le, count] of buckets) {
      const upper = Number(le);
      if (count >= rank) {
        if (!Number.isFinite(upper)) return lower;
        return lower + (upper - lower) * (count > below ? (rank - below) / (count - below) : 0);
      }
      lower = upper;
      below = count;
    }
    return lower;
  }

  function delta(later, earlier) {
    const sub = (a, b) => a - (b || 0);
    return {
      seconds: earlier ? later.time - earlier.time : null,
      total: sub(later.requests.total, earlier && earlier.requests.total),
      errors: sub(later.requests.errors, earlier && earlier.requests.errors),
      hits: sub(later.cache.hit, earlier && earlier.cache.hit),
      lookups: sub(later.cache.hit + later.cache.miss, earlier && earlier.cache.hit + earlier.cache.miss),
    };
  }

  function latencyDelta(later, earlier) {
    return later.latency.buckets.map(([le, count]) => {
      const before = earlier ? earlier.latency.buckets.find(([l]) => l === le) : null;
      return [le, count - (before ? before[1] : 0)];
    });
  }

  function tile(label, value, note) {
    return el("div", { class: "tile" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value), el("div", { class: "note" }, note));
  }

  async function loadOverview() {
    // a first reading (or one after a while on another page) brings the server's last
    // minute with it, so the rates over the last minute are whole from the start
    const stale = !samples.length || performance.now() - lastReadAt > WINDOW_S * 1000;
    const sample = await api(stale ? "stats?history=1" : "stats");
    lastReadAt = performance.now();
    if (sample.history) {
      samples = sample.history;
      delete sample.history;
    }
    samples.push(sample);
    if (samples.length > KEEP_SAMPLES) samples.shift();
    const latest = samples[samples.length - 1];
    const oldest = samples.find((s) => latest.time - s.time <= WINDOW_S + 1);
    const windowed = oldest !== latest;
    const d = delta(latest, windowed ? oldest : null);
    const note = windowed ? "last " + Math.round(d.seconds) + " s" : "since start";
    const rate = windowed ? d.total / d.seconds : null;
    const errorRate = d.total > 0 ? d.errors / d.total : null;
    const cacheNote = d.lookups > 0 ? note : "no cache lookups " + (windowed ? "lately" : "yet");
    // the gateway's last minute holds counts only: latency comes from this page's readings
    const timed = samples.find((s) => s.latency && latest.time - s.time <= WINDOW_S + 1);
    const buckets = latencyDelta(latest, timed !== latest ? timed : null);
    const latencyNote = timed !== latest ? "last " + Math.round(latest.time - timed.time) + " s" : "since start";
    $("#tiles").replaceChildren(
      tile("Requests per second", rate === null ? "…" : number(rate, 1), windowed ? note : "measuring…"),
      tile("Error rate (5xx)", percent(errorRate), note),
      tile("Latency p50", ms(quantile(buckets, 0.5)), latencyNote),
      tile("Latency p99", ms(quantile(buckets, 0.99)), latencyNote),
      tile("Spend today", usd(latest.spend_today_usd), "UTC day, all keys"),
      tile("Cache hit rate", d.lookups > 0 ? percent(d.hits / d.lookups) : "–", cacheNote),
    );
    const times = [], rates = [], errors = [];
    for (let i = 1; i < samples.length; i++) {
      const step = delta(samples[i], samples[i - 1]);
      times.push(samples[i].time);
      rates.push(step.seconds > 0 ? step.total / step.seconds : 0);
      errors.push(step.total > 0 ? (100 * step.errors) / step.total : 0);
    }
    drawChart("traffic", $("#traffic-chart"), {
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.2)] }, "%": { range: [0, 100] } },
      series: [{}, { label: "requests/s", stroke: PALETTE[0], width: 2 }, { label: "errors %", stroke: PALETTE[4], width: 2, scale: "%" }],
      axes: [{}, { label: "requests/s" }, { side: 1, scale: "%", label: "errors %", grid: { show: false } }],
    }, [times, rates, errors]);
  }

  // -- spend ----------------------------------------------------------------------------------
  async function loadSpend() {
    const by = $("#spend-by").value;
    $("#spend-by-label").textContent = by;
    const [daily, day, month, total, budgets] = await Promise.all([
      api("spend/daily?days=30&by=" + by),
      api("spend?period=day&by=" + by),
      api("spend?period=month&by=" + by),
      api("spend?period=total&by=" + by),
      api("budgets"),
    ]);
    const figure = (report, name) => {
      const row = report.data.find((r) => r[by] === name);
      return row ? row.spend_usd : 0;
    };
    const names = new Set([...daily.series.map((s) => s.name), ...total.data.map((r) => r[by])]);
    const rows = [...names].sort((a, b) => figure(total, b) - figure(total, a)).map((name) => {
      const thirty = (daily.series.find((s) => s.name === name) || { total_usd: 0 }).total_usd;
      const cell = (value, column) => el("td", { class: "num", "data-usd": value, "data-column": column }, usd(value));
      return el("tr", { "data-name": name }, el("th", { scope: "row" }, name),
        cell(figure(day, name), "day"), cell(figure(month, name), "month"), cell(thirty, "days30"), cell(figure(total, name), "total"));
    });
    fillTable($("#spend-table"), rows, "No spend recorded yet.");
    drawSpendChart(daily);
    const budgetRows = budgets.data.map((b) => {
      const share = b.limit_usd > 0 ? b.spent_usd / b.limit_usd : 1;
      return el("tr", {},
        el("th", { scope: "row" }, b.dimension + " " + b.name), el("td", {}, b.period), el("td", {}, b.source),
        el("td", { class: "num", "data-usd": b.spent_usd }, usd(b.spent_usd)), el("td", { class: "num" }, usd(b.limit_usd)),
        el("td", {}, el("span", { class: "use" },
          el("meter", { min: 0, max: 1, low: 0.75, high: 0.9, optimum: 0, value: Math.min(share, 1), "aria-label": b.dimension + " " + b.name + " budget used" }),
          percent(share))));
    });
    fillTable($("#budget-table"), budgetRows, budgets.mounted ? "No budget has been used this period." : "The budget middleware is not mounted.");
  }

  function drawSpendChart(daily) {
    const times = daily.days.map((day) => Date.parse(day + "T00:00:00Z") / 1000);
    const top = daily.series.slice(0, PALETTE.length - 1);
    const rest = daily.series.slice(PALETTE.length - 1);
    if (rest.length) top.push({ name: "others", values: times.map((_, i) => rest.reduce((sum, s) => sum + s.values[i], 0)) });
    if (!top.length) top.push({ name: "no spend", values: times.map(() => 0) });
    // stacked bars: each series drawn at its running total, the tallest first
    const stacked = [];
    let running = times.map(() => 0);
    for (const series of top) {
      running = running.map((sum, i) => sum + series.values[i]);
      // a day this series spent nothing draws no bar of its colour over the ones below
      stacked.push(running.map((sum, i) => (series.values[i] ? sum : null)));
    }
    const bars = uPlot.paths.bars({ size: [0.7, 60] });
    const series = top.map((s, i) => ({
      label: s.name,
      stroke: PALETTE[i],
      fill: PALETTE[i],
      paths: bars,
      points: { show: false },
      value: (u, v, si, idx) => (idx === null || idx === undefined ? "–" : usd(s.values[idx])),
    })).reverse();
    drawChart("spend", $("#spend-chart"), {
      scales: { x: { time: true } },
      axes: [{}, { label: "USD", values: (u, ticks) => ticks.map((t) => "$" + t) }],
      series: [{ label: "day", value: (u, v) => (v === null ? "–" : new Date(v * 1000).toISOString().slice(0, 10)) }, ...series],
    }, [times, ...stacked.reverse()]);
  }

  // -- keys -------------------------------------------------------------------------------------
  function ownLimits(key) {
    const parts = [];
    if (key.budget_usd !== null && key.budget_usd !== undefined) parts.push(usd(key.budget_usd) + " " + (key.budget_period || "monthly"));
    if (key.rpm) parts.push(key.rpm + " rpm");
    if (key.tpm) parts.push(key.tpm + " tpm");
    return parts.join(", ") || "–";
  }

  async function loadKeys() {
    const keys = await api("keys");
    const rows = keys.data.map((key) => {
      const badge = { active: "ok", expired: "warn", shadowed: "bad" }[key.status] || "warn";
      const action = key.source === "runtime"
        ? el("button", { type: "button", class: "danger", "data-revoke": key.id, "aria-label": "Revoke key " + key.id, onclick: () => revoke(key.id) }, "Revoke")
        : el("span", { class: "muted" }, "edit auth.yaml");
      return el("tr", { "data-key": key.id },
        el("th", { scope: "row" }, key.id), el("td", {}, key.source), el("td", {}, key.user || "–"), el("td", {}, key.team || "–"),
        el("td", {}, key.tier || "–"), el("td", {}, key.models ? key.models.join(", ") : "all"), el("td", {}, ownLimits(key)),
        el("td", {}, key.expires ? key.expires.slice(0, 10) : "never"), el("td", {}, el("span", { class: "badge " + badge }, key.status)),
        el("td", {}, action));
    });
    fillTable($("#keys-table"), rows, "No keys yet.");
  }

  async function createKey(event) {
    event.preventDefault();
    const form = event.target;
    const body = {};
    for (const [name, value] of new FormData(form).entries()) {
      const text = String(value).trim();
      if (!text) continue;
      if (name === "budget_usd") body[name] = Number(text);
      else if (name === "rpm" || name === "tpm") body[name] = parseInt(text, 10);
      else if (name === "models") body[name] = text.split(",").map((m) => m.trim()).filter(Boolean);
      else body[name] = text;
    }
    if (body.budget_usd === undefined) delete body.budget_period;
    if (body.metadata !== undefined) {
      try {
        body.metadata = JSON.parse(body.metadata);
      } catch (error) {
        $("#key-error").textContent = "Metadata must be a JSON object.";
        return;
      }
    }
    $("#key-error").textContent = "";
    try {
      const created = await api("keys", { method: "POST", body: JSON.stringify(body) });
      $("#new-key-id").textContent = created.id;
      $("#new-key-secret").textContent = created.key;
      $("#new-key").hidden = false;
      form.reset();
      await loadKeys();
    } catch (error) {
      if (!(error instanceof Refused)) $("#key-error").textContent = error.message;
    }
  }

  async function revoke(id) {
    if (!window.confirm("Revoke the key " + id + "? Requests with it are refused within a second.")) return;
    try {
      await api("keys/" + encodeURIComponent(id), { method: "DELETE" });
      setStatus("Revoked " + id);
      await loadKeys();
    } catch (error) {
      if (!(error instanceof Refused)) setStatus("Could not revoke: " + error.message);
    }
  }

  // -- limits -----------------------------------------------------------------------------------
  function usage(used, cap, label) {
    if (!cap) return el("td", { class: "muted" }, "–");
    const value = used || 0;
    return el("td", {}, el("span", { class: "use" },
      el("meter", { min: 0, max: cap, low: cap * 0.75, high: cap * 0.9, optimum: 0, value: Math.min(value, cap), "aria-label": label }),
      number(value) + " / " + number(cap)));
  }

  async function loadLimits() {
    const limits = await api("limits");
    const container = $("#limits");
    if (!limits.mounted) {
      container.replaceChildren(el("p", { class: "empty" }, "The throttle middleware is not mounted."));
      return;
    }
    if (!limits.data.length) {
      container.replaceChildren(el("p", { class: "empty" }, "No limits are defined."));
      return;
    }
    container.replaceChildren(...limits.data.map((limit) => {
      const match = Object.entries(limit.match || {}).map(([k, v]) => k + "=" + (Array.isArray(v) ? v.join("|") : v)).join(", ");
      const caps = [limit.rpm && limit.rpm + " rpm", limit.tpm && limit.tpm + " tpm", limit.concurrent && limit.concurrent + " in flight"].filter(Boolean).join(" · ");
      const title = "Per " + limit.per + (match ? " where " + match : "") + ": " + caps;
      const table = el("table", { "data-limit": limit.id },
        el("caption", {}, title, el("span", { class: "muted" }, " (" + limit.source + ", " + limit.on_limit + ")")),
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, limit.per), el("th", { scope: "col" }, "Requests, last 60 s"),
          el("th", { scope: "col" }, "Tokens, last 60 s"), el("th", { scope: "col" }, "In flight"))),
        el("tbody"));
      fillTable(table, limit.use.map((u) => el("tr", { "data-subject": u.subject }, el("th", { scope: "row" }, u.subject === "*" ? "everyone" : u.subject),
        usage(u.rpm, limit.rpm, u.subject + " requests"), usage(u.tpm, limit.tpm, u.subject + " tokens"),
        usage(u.concurrent, limit.concurrent, u.subject + " in flight"))), "Nothing held right now.");
      return el("div", { class: "card" }, table);
    }));
  }

  // -- models -----------------------------------------------------------------------------------
  async function loadModels() {
    const models = await api("models");
    $("#models").replaceChildren(...models.data.map((model) => {
      const table = el("table", { "data-model": model.name },
        el("caption", {}, model.name, el("span", { class: "muted" }, " · " + model.balance + " · cooldown after " + model.cooldown_failures + " failures for " + model.cooldown_s + " s")),
        el("thead", {}, el("tr", {}, ...["Deployment", "Provider", "Upstream model", "Weight", "Health", "Cooldown left", "In flight", "Calls", "Failed", "First byte p50", "First byte mean", "Moving avg"]
          .map((h, i) => el("th", { scope: "col", class: i >= 3 && i !== 4 ? "num" : null }, h)))),
        el("tbody"));
      fillTable(table, model.deployments.map((d) => {
        const badge = d.health === "ok" ? "ok" : d.health === "failing" ? "bad" : "warn";
        return el("tr", { "data-deployment": d.id },
          el("th", { scope: "row" }, d.id), el("td", {}, d.provider), el("td", {}, d.model), el("td", { class: "num" }, number(d.weight, 1)),
          el("td", {}, el("span", { class: "badge " + badge }, d.health)), el("td", { class: "num" }, d.cooldown_s ? d.cooldown_s + " s" : "–"),
          el("td", { class: "num" }, d.in_flight), el("td", { class: "num" }, number(d.requests)), el("td", { class: "num" }, number(d.errors)),
          el("td", { class: "num" }, d.p50_first_byte_ms === null ? "–" : d.p50_first_byte_ms + " ms"),
          el("td", { class: "num" }, d.mean_first_byte_ms === null ? "–" : d.mean_first_byte_ms + " ms"),
          el("td", { class: "num" }, d.latency_ms ? d.latency_ms + " ms" : "–"));
      }), "No deployments.");
      return el("div", { class: "card" }, table);
    }));
  }

  // -- MCP --------------------------------------------------------------------------------------
  let mcpToolsAt = 0;
  let mcpTools = {};

  async function loadMcp() {
    const listTools = Date.now() - mcpToolsAt > 60000;  // the servers' tools once a minute: each asks every server
    const mcp = await api("mcp" + (listTools ? "?tools=1" : ""));
    if (listTools) {
      mcpToolsAt = Date.now();
      mcpTools = Object.fromEntries(mcp.servers.map((s) => [s.name, s]));
    }
    fillTable($("#mcp-servers"), mcp.servers.map((server) => {
      const listed = mcpTools[server.name] || {};
      const tools = listed.problem ? el("span", { class: "badge bad" }, listed.problem) : (listed.tools || []).join(", ") || "–";
      const prices = Object.entries(server.prices).map(([tool, usd]) => tool + " $" + usd).join(", ") || "–";
      return el("tr", { "data-server": server.name }, el("th", { scope: "row" }, server.name), el("td", {}, server.url), el("td", {}, tools),
        el("td", { class: "num" }, server.timeout_s + " s"), el("td", {}, prices));
    }), "No MCP servers in gateway.yaml.");
    fillTable($("#mcp-calls"), mcp.calls.map((row) => el("tr", { "data-key": row.key || "-", "data-tool": row.tool },
      el("th", { scope: "row" }, row.key || "(no key)"), el("td", {}, row.tool), el("td", { class: "num" }, String(row.calls)),
      el("td", { class: "num" }, String(row.refused)), el("td", { class: "num" }, String(row.failed)))), "No tool calls today.");
  }

  // -- policies ---------------------------------------------------------------------------------
  async function loadPolicies() {
    const [policies, stats] = await Promise.all([api("policies"), api("stats?history=1")]);
    fillTable($("#policies-table"), policies.policies.map((p) => el("tr", { "data-policy": p.kind },
      el("th", { scope: "row" }, p.kind), el("td", {}, p.file || "(inline)"), el("td", {}, el("code", {}, p.version)), el("td", {}, when(p.loaded_at)),
      el("td", { class: "num" }, p.reloads), el("td", { class: "num" }, p.failures),
      el("td", { class: p.last_error ? "error" : "muted" }, p.last_error ? p.last_error + " (" + when(p.error_at) + ")" : "none"))), "No policy files are loaded.");
    drawGuard(policies.policies.some((p) => p.kind === "guard"), stats);
  }

  function drawGuard(mounted, stats) {
    // findings per rule: the table since start and over the last minute, the chart per second
    const readings = [...(stats.history || []), stats].filter((r) => r.guard);
    const latest = stats.guard || {};
    const first = readings.find((r) => stats.time - r.time <= WINDOW_S + 1) || stats;
    const rules = Object.keys(latest).sort((a, b) => latest[b] - latest[a]);
    fillTable($("#guard-table"), rules.map((rule) => el("tr", { "data-rule": rule },
      el("th", { scope: "row" }, rule), el("td", { class: "num" }, number(latest[rule], 0)),
      el("td", { class: "num" }, number(latest[rule] - ((first.guard || {})[rule] || 0), 0)))),
      mounted ? "No guard rule has found anything yet." : "The guard middleware is not mounted.");
    const shown = rules.slice(0, PALETTE.length);
    const times = [], perRule = shown.map(() => []);
    for (let i = 1; i < readings.length; i++) {
      const seconds = readings[i].time - readings[i - 1].time;
      times.push(readings[i].time);
      shown.forEach((rule, j) => perRule[j].push(seconds > 0 ? ((readings[i].guard[rule] || 0) - (readings[i - 1].guard[rule] || 0)) / seconds : 0));
    }
    drawChart("guard", $("#guard-chart"), {
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.2)] } },
      series: [{}, ...shown.map((rule, j) => ({ label: rule, stroke: PALETTE[j], width: 2 }))],
      axes: [{}, { label: "findings/s" }],
    }, [times, ...perRule]);
  }

  async function reloadPolicies() {
    try {
      await api("reload", { method: "POST" });
      await loadPolicies();
      setStatus("Policies reloaded");
    } catch (error) {
      if (!(error instanceof Refused)) setStatus("Reload failed: " + error.message);
    }
  }

  const LOADERS = { overview: loadOverview, spend: loadSpend, keys: loadKeys, limits: loadLimits, models: loadModels, mcp: loadMcp, policies: loadPolicies };

  // -- wiring -----------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("#login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      signIn($("#master-key").value.trim());
    });
    $("#logout").addEventListener("click", () => signOut("Signed out."));
    $("#key-form").addEventListener("submit", createKey);
    $("#spend-by").addEventListener("change", () => refresh("spend"));
    $("#reload").addEventListener("click", reloadPolicies);
    $("#copy-key").addEventListener("click", () => navigator.clipboard.writeText($("#new-key-secret").textContent).then(() => setStatus("Key copied")));
    window.addEventListener("hashchange", route);
    window.addEventListener("resize", () => {
      for (const [name, chart] of Object.entries(charts)) chart.setSize({ width: chartWidth($("#" + name + "-chart")), height: 260 });
    });
    if (masterKey) signIn(masterKey);
    else $("#master-key").focus();
  });

  // the charts' data, for a look from the browser's devtools (and the console's tests)
  window.lockgateConsole = Object.freeze({ charts });
})();
