/** Plain-text formatting for the /llm command (no ANSI: the text also travels over RPC). */

import type { ActiveInfo, ActivityEntry, ModelInfo, Progress, SavedCache, StatusInfo, WorkerInfo } from "./client.ts";

export function formatBytes(n: number | null | undefined): string {
	if (typeof n !== "number" || !Number.isFinite(n) || n < 0) return "";
	const units = ["B", "KB", "MB", "GB", "TB"];
	let v = n;
	let i = 0;
	while (v >= 1024 && i < units.length - 1) {
		v /= 1024;
		i++;
	}
	return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

export function formatDuration(seconds: number | null | undefined): string {
	if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) return "";
	if (seconds < 1) return `${Math.max(1, Math.round(seconds * 1000))} ms`;
	if (seconds < 10) return `${seconds.toFixed(1)}s`;
	if (seconds < 60) return `${Math.round(seconds)}s`;
	const m = Math.floor(seconds / 60);
	if (m < 60) return `${m}m ${Math.round(seconds % 60)}s`;
	const h = Math.floor(m / 60);
	if (h < 48) return `${h}h ${m % 60}m`;
	return `${Math.floor(h / 24)}d ${h % 24}h`;
}

/** started_at / ready_at may be epoch seconds, epoch ms or an ISO string. */
export function formatTime(value: number | string | null | undefined): string {
	if (value === null || value === undefined || value === "") return "";
	let ms: number;
	if (typeof value === "number") ms = value > 1e12 ? value : value * 1000;
	else ms = Date.parse(value);
	if (!Number.isFinite(ms)) return String(value);
	const d = new Date(ms);
	const pad = (x: number) => String(x).padStart(2, "0");
	const sameDay = new Date().toDateString() === d.toDateString();
	const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
	return sameDay ? time : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

export function progressBar(percent: number | null | undefined, width = 20): string {
	if (typeof percent !== "number" || !Number.isFinite(percent)) return "";
	const p = Math.max(0, Math.min(100, percent));
	const filled = Math.round((p / 100) * width);
	return `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${Math.floor(p)}%`;
}

/** The daemon's load phases as people read them (restoring: the saved KV cache is read back). */
export function phaseLabel(phase: string | undefined): string | undefined {
	return phase === "restoring" ? "restoring cache" : phase;
}

export function formatProgress(progress: Progress | null | undefined): string {
	if (!progress) return "";
	const parts: string[] = [];
	if (progress.phase) parts.push(phaseLabel(progress.phase) as string);
	if (typeof progress.percent === "number" && Number.isFinite(progress.percent)) {
		parts.push(`${Math.floor(Math.max(0, Math.min(100, progress.percent)))}%`);
	}
	return parts.join(" ");
}

export function modelLabel(m: ModelInfo): string {
	let label = m.id;
	if (m.name && m.name !== m.id) label += ` — ${m.name}`;
	const tags: string[] = [];
	if (m.active) tags.push("active");
	if (m.default) tags.push("default");
	const size = formatBytes(m.size_bytes);
	if (size) tags.push(size);
	const memory = memoryTag(m);
	if (memory) tags.push(memory);
	if (tags.length) label += `  [${tags.join(", ")}]`;
	if (m.available === false) label += `  (unavailable${m.error ? `: ${oneLine(m.error, 80)}` : ""})`;
	return label;
}

/** "needs 3.0 MB" (host and devices together), "does not fit" when free memory is short. */
export function memoryTag(m: ModelInfo): string {
	const memory = m.memory;
	if (!memory || memory.state !== "known" || typeof memory.host_mib !== "number") return "";
	const mib = memory.host_mib + Object.values(memory.devices ?? {}).reduce((a, b) => a + b, 0);
	const needs = `needs ${mib > 0 ? formatBytes(mib * 1024 * 1024) : "<1 MB"}`;
	return memory.fits === false ? `${needs}, does not fit` : needs;
}

export function oneLine(text: string, max = 200): string {
	const s = text.replace(/\s+/g, " ").trim();
	return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

export function tail(lines: string[] | null | undefined, n: number): string[] {
	if (!Array.isArray(lines)) return [];
	return lines.filter((l) => typeof l === "string").slice(-n);
}

export interface PublishedModel {
	contextWindow: number;
	maxTokens: number;
	name: string;
}

/** The status block shown by `/llm status` and as the dashboard header. */
export function statusText(
	baseUrl: string,
	status: StatusInfo,
	active: ActiveInfo | undefined,
	published: PublishedModel | undefined,
): string {
	const lines: string[] = [];
	const d = status.daemon ?? {};
	const b = status.backend ?? {};
	const head: string[] = [];
	if (d.pid) head.push(`pid ${d.pid}`);
	if (typeof d.uptime_s === "number") head.push(`up ${formatDuration(d.uptime_s)}`);
	lines.push(`llmctld ${d.version ?? ""} at ${baseUrl}${head.length ? ` (${head.join(", ")})` : ""}`.replace("  ", " "));

	const state = b.state ?? active?.state ?? "unknown";
	const model = b.model ?? active?.model ?? null;
	const name = active && active.model === model ? active.name : null;
	const modelText = model ? `${model}${name && name !== model ? ` (${name})` : ""}` : "none";
	let activeLine = `Active:     ${modelText} — ${state}`;
	if (state === "starting") activeLine += ` ${progressBar(b.progress?.percent) || formatProgress(b.progress) || "…"}`;
	if (status.idle?.pinned) activeLine += ", pinned";
	if (state === "ready" && typeof b.load_seconds === "number") activeLine += `, loaded in ${formatDuration(b.load_seconds)}`;
	lines.push(activeLine);

	const def = status.default_model ?? active?.default_model ?? null;
	lines.push(`Default:    ${def ?? "none (set daemon.default_model)"}`);

	const backend: string[] = [];
	if (b.pid) backend.push(`pid ${b.pid}`);
	if (b.port) backend.push(`port ${b.port}`);
	if (b.started_at) backend.push(`started ${formatTime(b.started_at)}`);
	if (b.ready_at) backend.push(`ready ${formatTime(b.ready_at)}`);
	if (backend.length) lines.push(`Backend:    ${backend.join(" · ")}`);
	lines.push(`In flight:  ${typeof status.in_flight === "number" ? status.in_flight : "?"}`);
	if (status.idle?.text) lines.push(`Idle:       ${status.idle.text}`);
	lines.push(...workerLines(status.workers));
	if (published) {
		lines.push(
			`Pi model:   llmctl/local — ${published.name}, context ${published.contextWindow}, max output ${published.maxTokens}`,
		);
	}
	if (b.error) {
		lines.push(`Last error: ${oneLine(b.error, 300)}`);
		const logTail = tail(b.log_tail, 10);
		if (logTail.length) {
			lines.push("Log tail:");
			for (const l of logTail) lines.push(`  ${l}`);
		}
	}
	return lines.join("\n");
}

export function summarizeReload(summary: Record<string, unknown>): string {
	const parts: string[] = [];
	for (const [key, value] of Object.entries(summary ?? {})) {
		if (value === null || value === undefined) continue;
		if (Array.isArray(value)) {
			const items = value.map((v) => (v && typeof v === "object" ? ((v as { id?: unknown }).id ?? JSON.stringify(v)) : v));
			parts.push(`${key}: ${items.length ? items.join(", ") : "none"}`);
		} else if (value && typeof value === "object") {
			parts.push(`${key}: ${JSON.stringify(value)}`);
		} else {
			parts.push(`${key}: ${String(value)}`);
		}
	}
	return parts.join("\n");
}

/** "Workers:" and one line per RPC worker: its state, free memory, what uses it. */
export function workerLines(workers: WorkerInfo[] | null | undefined): string[] {
	if (!Array.isArray(workers) || !workers.length) return [];
	const lines = ["Workers:"];
	for (const w of workers) {
		const parts = [`${w.name} ${w.address} — ${w.state}`];
		const devices = Array.isArray(w.devices) ? w.devices : [];
		if (devices.length) {
			const free = devices.reduce((a, d) => a + (typeof d.free === "number" ? d.free : 0), 0);
			parts.push(`${devices.length} device${devices.length === 1 ? "" : "s"}, ${formatBytes(free)} free`);
		}
		if (w.in_use) parts.push(`in use by ${w.in_use}`);
		if (w.error && w.state !== "up") parts.push(oneLine(w.error, 120));
		lines.push(`  ${parts.join(" · ")}`);
	}
	return lines;
}

/** "Recent:" and the last requests: time, route, model, status, tokens, tokens/s. */
export function activityLines(entries: ActivityEntry[] | null | undefined, n = 5): string[] {
	if (!Array.isArray(entries) || !entries.length) return [];
	const lines = ["Recent:"];
	for (const e of entries.slice(-n)) {
		const parts = [formatTime(e.time), `${e.method ?? ""} ${e.route ?? ""}`.trim(), e.model ?? "-", String(e.status ?? "-")];
		if (typeof e.duration_ms === "number") parts.push(formatDuration(e.duration_ms / 1000));
		if (typeof e.prompt_tokens === "number" || typeof e.generated_tokens === "number") {
			parts.push(`${e.prompt_tokens ?? "-"}/${e.generated_tokens ?? "-"} tok`);
		}
		if (typeof e.tokens_per_s === "number" && Number.isFinite(e.tokens_per_s)) parts.push(`${e.tokens_per_s.toFixed(1)} tok/s`);
		if (e.error) parts.push(`error: ${oneLine(e.error, 80)}`);
		lines.push(`  ${parts.join("  ")}`);
	}
	return lines;
}

/** A model's saved KV cache, as the dashboard says it: "saved cache 1,234 tokens (2.0 MB)". */
export function cacheTag(model: string, caches: SavedCache[] | null | undefined): string {
	const mine = (Array.isArray(caches) ? caches : []).filter((c) => c.model === model);
	if (!mine.length) return "";
	const tokens = mine.reduce((a, c) => a + (c.tokens || 0), 0);
	const bytes = mine.reduce((a, c) => a + (c.bytes || 0), 0);
	const stale = mine.every((c) => c.matches === false) ? ", stale: its config changed" : "";
	return `saved cache ${tokens.toLocaleString("en-US")} tokens (${formatBytes(bytes)}${stale})`;
}

/** "Models:" and one line per model: memory need, saved cache, no tool calls. */
export function modelLines(models: ModelInfo[] | null | undefined, caches: SavedCache[] | null | undefined): string[] {
	if (!Array.isArray(models) || !models.length) return [];
	const lines = ["Models:"];
	for (const m of models) {
		const tags = [memoryTag(m), cacheTag(m.id, caches), m.tool_calls === false ? "no tool calls" : ""].filter(Boolean);
		const mark = m.active ? "*" : m.default ? "d" : " ";
		lines.push(`  ${mark} ${m.id}${tags.length ? `  ${tags.join(" · ")}` : ""}${m.available === false ? "  (unavailable)" : ""}`);
	}
	return lines;
}
