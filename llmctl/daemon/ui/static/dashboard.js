// The llmctl dashboard. Plain browser JavaScript, no build step and no dependencies: it polls
// GET /status (the RPC workers' health too), follows GET /activity?follow=1 and GET
// /logs?follow=1 (NDJSON and text streams read with fetch), lists GET /cache (saved KV
// caches) and drives POST /switch/<id>?stream=1, POST /stop and POST /cache/clear. Every URL
// is relative, so the page talks to the daemon that served it.
"use strict";

const $ = (id) => document.getElementById(id);
const STATUS_EVERY_MS = 1000;
const ACTIVITY_ROWS = 50;
const LOG_CHARS = 200000;
const WINDOW_S = 60;

const state = { status: null, statusTick: Date.now(), models: [], activity: [], logModel: null,
                logAbort: null, switching: false, busyRetry: null, kvGeneration: null,
                workersSeen: "" };

// --- small helpers ---------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${String(Math.floor(s % 60)).padStart(2, "0")}s`
                : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

// Whole seconds, rounded up: drawn once a second from a fixed deadline, it shows every second.
function countdown(msLeft) {
  const s = Math.max(0, Math.ceil(msLeft / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${String(s % 60).padStart(2, "0")}s`
                : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

function ms(v) {
  if (v === null || v === undefined) return "–";
  return v < 10000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(1)} s`;
}

function bytes(n) {
  if (!n) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// A model's `memory` (GET /models, daemon/memory/): what it needs with its flags, in every
// place together, and whether that fits in what is free now.
function memoryCell(memory) {
  if (!memory) return el("td", { className: "muted", textContent: "–" });
  if (memory.state === "pending") {
    return el("td", { className: "muted", textContent: "…", title: "being estimated" });
  }
  if (memory.state !== "known") {
    return el("td", { className: "muted", textContent: "?", title: memory.error || "" });
  }
  const total = memory.host_mib + Object.values(memory.devices || {}).reduce((a, b) => a + b, 0);
  const mib = 1024 * 1024;
  const title = `${memory.source}, -c ${memory.ctx_size}: weights ${bytes(memory.weights_mib * mib)}, ` +
    `context ${bytes(memory.context_mib * mib)}, compute ${bytes(memory.compute_mib * mib)}; ` +
    `${bytes(memory.need_host_mib * mib)} needed on the host with the prompt cache, ` +
    `${bytes(Math.max(0, memory.available.host_mib) * mib)} available`;
  return el("td", { className: memory.fits ? "muted" : "unavailable", title,
                    textContent: `${bytes(total * mib) === "–" ? "<1 MiB" : bytes(total * mib)}` +
                                 (memory.fits ? "" : " · does not fit") });
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return body.error || { message: `HTTP ${response.status}` };
  } catch (e) {
    return { message: `HTTP ${response.status}` };
  }
}

// Lines of an NDJSON (or text) stream, as they arrive.
async function* lines(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffered.indexOf("\n")) >= 0) {
      yield buffered.slice(0, cut);
      buffered = buffered.slice(cut + 1);
    }
  }
  if (buffered) yield buffered;
}

function showMessage(text, kind = "error", retry = null) {
  $("message").hidden = false;
  $("message").className = `message ${kind === "error" ? "" : kind}`;
  $("message-text").textContent = text;
  state.busyRetry = retry;
  $("message-force").hidden = retry === null;
}

function hideMessage() {
  $("message").hidden = true;
  state.busyRetry = null;
}

// --- status ----------------------------------------------------------------------------------

async function pollStatus() {
  try {
    const response = await fetch("/status", { cache: "no-store" });
    if (!response.ok) throw new Error((await errorOf(response)).message);
    state.status = await response.json();
    renderStatus();
  } catch (e) {
    $("daemon").textContent = `llmctld does not answer (${e.message})`;
  } finally {
    // a fixed rate, each frame drawn for its tick: waiting a second after each answer would
    // drift, and the idle countdown would skip a second now and then
    state.statusTick = Math.max(state.statusTick + STATUS_EVERY_MS, Date.now());
    setTimeout(pollStatus, state.statusTick - Date.now());
  }
}

function renderStatus() {
  const { daemon, backend } = state.status;
  $("daemon").textContent = `llmctld ${daemon.version} · up ${seconds(daemon.uptime_s)}`;
  $("endpoint").textContent = `${location.origin}/v1 · model local`;
  const active = ["starting", "ready", "stopping", "failed"].includes(backend.state);
  $("active-model").textContent = active && backend.model ? backend.model : "no model loaded";
  $("active-state").textContent = backend.state;
  $("active-state").className = `state ${backend.state}`;
  $("in-flight").textContent = state.status.in_flight;
  $("load-seconds").textContent = backend.load_seconds ? seconds(backend.load_seconds) : "–";
  const progress = backend.progress || {};
  $("load").hidden = backend.state !== "starting";
  if (backend.state === "starting") showProgress(progress.phase, progress.percent);
  const idle = state.status.idle;  // the daemon's idle unload: countdown, pin, unloaded
  const idleText = !idle ? null
    : idle.unloads_at !== null && idle.unloads_at !== undefined
      ? `unloads in ${countdown(idle.unloads_at * 1000 - state.statusTick)}` : idle.text || null;
  $("idle-label").hidden = $("idle").hidden = idleText === null;
  $("idle").textContent = idleText || "";
  const kv = kvText(backend.kv, backend.state);
  $("kv-label").hidden = $("kv").hidden = kv === null;
  $("kv").textContent = kv || "";
  if (backend.generation !== state.kvGeneration) {  // a save or restore may have happened
    state.kvGeneration = backend.generation;
    loadCaches();
  }
  $("backend-error").hidden = !(backend.state === "failed" && backend.error);
  $("backend-error").textContent = backend.state === "failed" ? backend.error || "" : "";
  const logModel = backend.model || null;
  if (logModel !== state.logModel) followLog(logModel);
  // a worker coming or going changes which models can load
  const workersSeen = (state.status.workers || []).map((w) => `${w.name}=${w.state}`).join(",");
  const workersChanged = workersSeen !== state.workersSeen;
  state.workersSeen = workersSeen;
  renderWorkers(state.status.workers || []);
  if (state.models.length && (workersChanged
      || state.models.some((m) => m.active !== isActive(m.id)))) loadModels();
}

// The RPC workers (config `workers:`): their state since when, what they offer or why not.
function renderWorkers(workers) {
  $("workers-card").hidden = workers.length === 0;
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  for (const w of workers) {
    const since = w.since ? new Date(w.since * 1000).toLocaleTimeString([], { hour12: false }) : "–";
    const free = (w.devices || []).reduce((sum, d) => sum + (d.free || 0), 0);
    const detail = w.state === "down" || w.state === "busy" ? w.error || ""
      : [w.in_use ? `serving ${w.in_use}` : "",
         w.devices && w.devices.length ? `${w.devices.length} device(s), ${bytes(free)} free` : ""]
        .filter(Boolean).join(" · ");
    const row = el("tr", {},
      el("td", { textContent: w.name }),
      el("td", { className: "muted", textContent: w.address }),
      el("td", {}, el("span", { className: `state worker-${w.state}`, textContent: w.state })),
      el("td", { className: "muted", textContent: since }),
      el("td", { className: w.state === "up" ? "muted" : "unavailable", textContent: detail }));
    row.dataset.worker = w.name;
    body.append(row);
  }
}

function isActive(id) {
  const b = state.status && state.status.backend;
  return !!b && b.model === id && (b.state === "starting" || b.state === "ready");
}

// the load's phases as people read them (the daemon's names: spawning, loading, warming,
// restoring = the saved KV cache being read back before the model serves)
const PHASES = { restoring: "restoring cache" };

function kvText(kv, backendState) {
  if (!kv) return null;
  if (backendState === "stopped") {
    if (kv.saved_tokens) return `saved ${kv.saved_tokens.toLocaleString()} tokens of ${kv.model} (${bytes(kv.saved_bytes)})`;
    const why = kv.save_error || kv.save_skipped;
    return why ? `${kv.model} not saved: ${why}` : null;
  }
  if (!kv.kept) return `not kept: ${kv.reason}`;
  if (kv.restored_tokens) {
    const reused = kv.reused_tokens === null || kv.reused_tokens === undefined ? ""
      : `, the first request reused ${kv.reused_tokens.toLocaleString()}`;
    return `restored ${kv.restored_tokens.toLocaleString()} tokens in ${seconds(kv.restore_seconds)}${reused}`;
  }
  return `kept: ${kv.reason}`;
}

function showProgress(phase, percent) {
  phase = PHASES[phase] || phase;
  const fill = $("load-fill");
  if (percent === null || percent === undefined) {
    fill.classList.add("indeterminate");
    fill.style.width = "";
    $("load-text").textContent = phase || "loading";
  } else {
    fill.classList.remove("indeterminate");
    fill.style.width = `${Math.max(0, Math.min(100, percent))}%`;
    $("load-text").textContent = `${phase || "loading"} ${Math.round(percent)}%`;
  }
}

// --- models, switch and stop -----------------------------------------------------------------

async function loadModels() {
  const response = await fetch("/models", { cache: "no-store" });
  if (!response.ok) return showMessage((await errorOf(response)).message);
  const data = await response.json();
  state.models = data.models;
  const body = $("models").tBodies[0];
  body.replaceChildren();
  for (const m of data.models) {
    if (!m.id) continue;
    const name = el("td", {}, m.name && m.name !== m.id ? `${m.name} ` : "",
                    el("span", { className: "muted", textContent: m.id }));
    if (m.active) name.append(el("span", { className: "tag", textContent: "active" }));
    if (m.default) name.append(el("span", { className: "tag muted", textContent: "default" }));
    if (!m.available) name.append(el("div", { className: "unavailable", textContent: m.error }));
    const button = el("button", { textContent: m.active ? "Active" : "Switch",
                                  disabled: !m.available || m.active || state.switching });
    button.dataset.model = m.id;
    button.addEventListener("click", () => switchTo(m.id, false));
    const row = el("tr", { className: m.active ? "active" : "" }, name,
                   el("td", { className: "muted", textContent: bytes(m.size_bytes) }),
                   memoryCell(m.memory), el("td", {}, button));
    row.dataset.model = m.id;
    body.append(row);
  }
}

function switchEvent(text, kind = "") {
  const list = $("switch-events");
  list.hidden = false;
  list.append(el("li", { className: kind, textContent: text }));
  list.scrollTop = list.scrollHeight;
}

async function switchTo(model, force) {
  hideMessage();
  state.switching = true;
  document.querySelectorAll("#models button").forEach((b) => { b.disabled = true; });
  $("switch-events").replaceChildren();
  const pin = $("pin").checked;
  switchEvent(`switch to ${model}${pin ? ", pinned" : ""}${force ? " (forced)" : ""}…`);
  try {
    const response = await fetch(`/switch/${encodeURIComponent(model)}?stream=1${force ? "&force=1" : ""}${pin ? "&pin=1" : ""}`,
                                 { method: "POST" });
    if (!response.ok) {
      const err = await errorOf(response);
      switchEvent(`${response.status} ${err.code || ""}: ${err.message}`, "error");
      showMessage(`Switch refused (${response.status} ${err.code || "error"}): ${err.message}`,
                  "error", err.code === "busy" ? () => switchTo(model, true) : null);
      return;
    }
    for await (const line of lines(response)) {
      if (!line.trim()) continue;
      const event = JSON.parse(line);
      if (event.event === "progress") {
        $("load").hidden = false;
        showProgress(event.phase, event.percent);
        switchEvent(`progress: ${PHASES[event.phase] || event.phase}${event.percent !== null && event.percent !== undefined ? ` ${event.percent}%` : ""}`);
      } else if (event.event === "ready") {
        switchEvent(`ready: ${event.model}${event.already_active ? " (already active)" : ` in ${seconds(event.load_seconds)}`}`, "ready");
      } else if (event.event === "error") {
        switchEvent(`error: ${event.message}`, "error");
        showMessage(`Switch to ${model} failed: ${event.message}`);
      } else {
        switchEvent(`${event.event}${event.model ? `: ${event.model}` : ""}${event.reason ? ` (${event.reason})` : ""}`);
      }
    }
  } catch (e) {
    switchEvent(`the switch stream broke off: ${e.message}`, "error");
  } finally {
    state.switching = false;
    await loadModels();
  }
}

async function stop(force) {
  hideMessage();
  const response = await fetch(`/stop${force ? "?force=1" : ""}`, { method: "POST" });
  if (!response.ok) {
    const err = await errorOf(response);
    showMessage(`Stop refused (${response.status} ${err.code || "error"}): ${err.message}`,
                "error", err.code === "busy" ? () => stop(true) : null);
    return;
  }
  const result = await response.json();
  showMessage(result.stopped ? `stopped ${result.stopped}` : "no model was running", "info");
  await loadModels();
}

// --- saved KV caches --------------------------------------------------------------------------

async function loadCaches() {
  const response = await fetch("/cache", { cache: "no-store" });
  if (!response.ok) return;
  const data = await response.json();
  const body = $("caches").tBodies[0];
  body.replaceChildren();
  for (const c of data.caches) {
    const clear = el("button", { textContent: "Clear", className: "plain" });
    clear.addEventListener("click", () => clearCaches(c.model));
    body.append(el("tr", {},
      el("td", {}, c.model), el("td", { textContent: c.tokens.toLocaleString() }),
      el("td", { className: "muted", textContent: bytes(c.bytes) }),
      el("td", { className: "muted", textContent: seconds(c.age_s) }),
      el("td", { className: c.matches ? "" : "muted", textContent: c.matches ? "yes" : "stale" }),
      el("td", {}, clear)));
  }
  $("caches-empty").hidden = data.caches.length > 0;
  $("caches-used").textContent = `${bytes(data.used_bytes) === "–" ? "0 B" : bytes(data.used_bytes)} of ${bytes(data.budget_bytes)}`;
}

async function clearCaches(model) {
  const response = await fetch(`/cache/clear${model ? `?model=${encodeURIComponent(model)}` : ""}`,
                               { method: "POST" });
  if (!response.ok) showMessage((await errorOf(response)).message);
  await loadCaches();
}

// --- activity and the tokens/s chart ---------------------------------------------------------

async function followActivity() {
  for (;;) {
    try {
      const response = await fetch(`/activity?follow=1&limit=${ACTIVITY_ROWS}`, { cache: "no-store" });
      if (!response.ok) {
        $("activity-empty").textContent = (await errorOf(response)).message;
        return;
      }
      state.activity = [];
      for await (const line of lines(response)) {
        if (line.trim()) addActivity(JSON.parse(line));
      }
    } catch (e) {
      // the daemon restarted its proxy worker, or went away: try again shortly
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function addActivity(entry) {
  state.activity.push(entry);
  if (state.activity.length > 500) state.activity.shift();
  const body = $("activity").tBodies[0];
  const tokens = entry.prompt_tokens === null && entry.generated_tokens === null ? "–"
    : `${entry.prompt_tokens ?? "–"} → ${entry.generated_tokens ?? "–"}${entry.cached_tokens ? ` (${entry.cached_tokens} cached)` : ""}`;
  const row = el("tr", {},
    el("td", { textContent: new Date(entry.time * 1000).toLocaleTimeString([], { hour12: false }) }),
    el("td", { className: "muted", textContent: entry.client }),
    el("td", { className: "route", textContent: `${entry.method} ${entry.route}${entry.stream ? " (stream)" : ""}` }),
    el("td", { textContent: entry.model || "–" }),
    el("td", { className: entry.status < 400 ? "status-ok" : "status-bad", textContent: entry.status }),
    el("td", { textContent: ms(entry.duration_ms) }),
    el("td", { textContent: ms(entry.ttfb_ms) }),
    el("td", { textContent: tokens }),
    el("td", { textContent: entry.tokens_per_s !== null ? entry.tokens_per_s.toFixed(1) : "–" }));
  row.dataset.seq = entry.seq;
  body.prepend(row);
  if (entry.error) {
    const err = el("tr", {}, el("td", { className: "err", colSpan: 9, textContent: `↳ ${entry.error}` }));
    row.after(err);
  }
  while (body.rows.length > ACTIVITY_ROWS * 2) body.deleteRow(-1);
  $("activity-empty").hidden = true;
  renderRates();
  drawChart();
}

function renderRates() {
  const since = Date.now() / 1000 - WINDOW_S;
  const recent = state.activity.filter((e) => e.time >= since);
  const speeds = recent.map((e) => e.tokens_per_s).filter((v) => v);
  $("rpm").textContent = Math.round(recent.length * 60 / WINDOW_S);
  $("tps").textContent = speeds.length ? (speeds.reduce((a, b) => a + b, 0) / speeds.length).toFixed(1) : "–";
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const points = state.activity.filter((e) => e.tokens_per_s).slice(-60);
  ctx.fillStyle = "#6b7385";
  ctx.font = "11px system-ui, sans-serif";
  if (!points.length) {
    ctx.fillText("tokens/s of the last requests", 4, height / 2 + 4);
    return;
  }
  const top = Math.max(...points.map((e) => e.tokens_per_s)) * 1.15;
  const step = width / Math.max(points.length, 30);
  ctx.fillStyle = "#2f6fde";
  points.forEach((e, i) => {
    const h = Math.max(2, (height - 14) * e.tokens_per_s / top);
    ctx.fillRect(i * step + 1, height - h, Math.max(step - 2, 1), h);
  });
  ctx.fillStyle = "#6b7385";
  ctx.fillText(`max ${Math.round(top / 1.15)} tok/s`, 4, 10);
}

// --- the log ---------------------------------------------------------------------------------

async function followLog(model) {
  if (state.logAbort) state.logAbort.abort();
  state.logModel = model;
  $("log-model").textContent = model ? `· ${model}` : "";
  const pre = $("log");
  pre.textContent = "";
  if (!model) return;
  const abort = new AbortController();
  state.logAbort = abort;
  try {
    const response = await fetch(`/logs/${encodeURIComponent(model)}?follow=1&lines=200`,
                                 { signal: abort.signal, cache: "no-store" });
    if (!response.ok) {
      pre.textContent = (await errorOf(response)).message;
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pre.textContent = (pre.textContent + decoder.decode(value, { stream: true })).slice(-LOG_CHARS);
      if ($("log-follow").checked) pre.scrollTop = pre.scrollHeight;
    }
  } catch (e) {
    if (e.name !== "AbortError") pre.textContent += `\n[log follow stopped: ${e.message}]`;
  }
}

// --- start -----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("stop").addEventListener("click", () => stop(false));
  $("caches-clear").addEventListener("click", () => clearCaches(null));
  $("message-close").addEventListener("click", hideMessage);
  $("message-force").addEventListener("click", () => { const retry = state.busyRetry; hideMessage(); if (retry) retry(); });
  loadModels();
  pollStatus();
  followActivity();
  drawChart();
});
