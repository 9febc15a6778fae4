/**
 * A small client for llmctld's control API (see docs/SPEC.md §4).
 *
 * Everything here uses Node's global fetch with explicit timeouts: the extension must never
 * block or break pi when the daemon is down, slow or misbehaving. Every failure becomes a
 * DaemonError whose message says what happened and what to do.
 */

export const DEFAULT_HOST = "127.0.0.1";
export const DEFAULT_PORT = 16384;

/** Timeouts (ms). Startup and per-prompt checks must be short; commands may wait longer. */
export const STARTUP_TIMEOUT_MS = 300;
export const QUICK_TIMEOUT_MS = 1000;
export const COMMAND_TIMEOUT_MS = 10_000;
/** A switch stream may stay silent while a big model loads; give up after this much silence. */
export const STREAM_IDLE_TIMEOUT_MS = 11 * 60_000;

export const START_HINT = "llmctld is not running — start it with `llmctld`";

export function daemonBaseUrl(env: NodeJS.ProcessEnv = process.env): string {
	let host = (env.LLMCTL_HOST ?? "").trim() || DEFAULT_HOST;
	// A wildcard listen address is not something to connect to: use loopback instead.
	if (host === "0.0.0.0") host = "127.0.0.1";
	if (host === "::" || host === "[::]") host = "::1";
	if (host.includes(":") && !host.startsWith("[")) host = `[${host}]`;
	const rawPort = (env.LLMCTL_PORT ?? "").trim();
	const port = /^\d+$/.test(rawPort) ? Number(rawPort) : DEFAULT_PORT;
	return `http://${host}:${port}`;
}

// ---------------------------------------------------------------------------------------------
// API shapes (only the fields the extension reads; everything is treated as optional/untrusted)

export interface PiModelMeta {
	name?: string;
	reasoning?: boolean;
	input?: string[];
	contextWindow?: number;
	maxTokens?: number;
}

export interface ActiveInfo {
	model: string | null;
	name: string | null;
	state: string;
	/** the model `state` is about, also when it is not active (failed, stopping) */
	backend_model?: string | null;
	error?: string | null;
	default_model: string | null;
	generation: number;
	pi?: { model?: PiModelMeta; provider_compat?: Record<string, unknown> };
	/** idle unload: "unloads in 12m 04s", "unloaded after 30m idle — wakes on the next request" */
	idle?: IdleInfo;
}

export interface IdleInfo {
	text?: string | null;
	pinned?: boolean;
	/** seconds until the idle unload, while it counts down */
	unloads_in_s?: number | null;
	unloaded?: { model: string; idle_seconds: number } | null;
}

/** One RPC worker's health (GET /status `workers`; llmctl/daemon/rpc/records.py). */
export interface WorkerInfo {
	name: string;
	address: string;
	state: string;
	error?: string | null;
	in_use?: string | null;
	devices?: { free?: number; total?: number }[];
}

/** One entry of GET /activity (llmctl/daemon/observe/activity.py). */
export interface ActivityEntry {
	seq?: number;
	time: number;
	method?: string;
	route?: string;
	model?: string | null;
	status?: number | null;
	stream?: boolean;
	duration_ms?: number | null;
	prompt_tokens?: number | null;
	generated_tokens?: number | null;
	cached_tokens?: number | null;
	tokens_per_s?: number | null;
	client?: string | null;
	error?: string | null;
}

/** One saved KV cache of GET /cache (llmctl/daemon/kvcache/continuity.py). */
export interface SavedCache {
	model: string;
	tokens: number;
	bytes: number;
	age_s?: number;
	matches?: boolean;
}

export interface Progress {
	phase?: string;
	percent?: number | null;
}

export interface StatusInfo {
	daemon?: { pid?: number; version?: string; uptime_s?: number; workers?: Record<string, unknown> };
	backend?: {
		state?: string;
		model?: string | null;
		pid?: number | null;
		port?: number | null;
		started_at?: number | string | null;
		ready_at?: number | string | null;
		load_seconds?: number | null;
		progress?: Progress | null;
		error?: string | null;
		log_tail?: string[] | null;
	};
	in_flight?: number;
	default_model?: string | null;
	idle?: IdleInfo;
	/** RPC workers (other machines' `llmctl worker`) and their health */
	workers?: WorkerInfo[];
}

/** What a model needs in memory with its flags, and whether it fits now (llmctl/daemon/memory/). */
export interface MemoryInfo {
	state: "known" | "pending" | "failed";
	source?: string;
	host_mib?: number;
	devices?: Record<string, number>;
	fits?: boolean;
	error?: string;
}

export interface ModelInfo {
	id: string;
	name?: string;
	available?: boolean;
	error?: string | null;
	active?: boolean;
	default?: boolean;
	file?: string;
	size_bytes?: number | null;
	memory?: MemoryInfo | null;
	/** false: llama-server refuses its requests with tools (it runs with --no-jinja) */
	tool_calls?: boolean;
}

export interface SwitchEvent {
	event: string;
	model?: string;
	phase?: string;
	percent?: number | null;
	load_seconds?: number;
	already_active?: boolean;
	/** on `stopping`: why a running model is restarted (e.g. its configuration changed) */
	reason?: string;
	code?: string;
	message?: string;
	log_tail?: string[];
}

/** One event of POST /pull (see `llmctl pull --json`). */
export interface PullEvent {
	event: string;
	file?: string;
	percent?: number | null;
	bytes?: number;
	total?: number | null;
	quant?: string;
	id?: string;
	next?: string;
	code?: string;
	message?: string;
}

export interface ApiErrorBody {
	code?: string;
	message?: string;
	suggestions?: string[];
	candidates?: string[];
	in_flight?: number;
	log_tail?: string[];
	[key: string]: unknown;
}

// ---------------------------------------------------------------------------------------------

export type DaemonErrorKind = "down" | "timeout" | "http" | "protocol";

export class DaemonError extends Error {
	readonly kind: DaemonErrorKind;
	readonly status?: number;
	readonly body?: ApiErrorBody;

	constructor(kind: DaemonErrorKind, message: string, status?: number, body?: ApiErrorBody) {
		super(message);
		this.name = "DaemonError";
		this.kind = kind;
		this.status = status;
		this.body = body;
	}

	get code(): string | undefined {
		return this.body?.code;
	}
}

function causeCode(err: unknown): string | undefined {
	let e: unknown = err;
	for (let i = 0; i < 4 && e && typeof e === "object"; i++) {
		const code = (e as { code?: unknown }).code;
		if (typeof code === "string") return code;
		e = (e as { cause?: unknown }).cause;
	}
	return undefined;
}

function isAbort(err: unknown): boolean {
	const name = err && typeof err === "object" ? (err as { name?: unknown }).name : undefined;
	return name === "TimeoutError" || name === "AbortError";
}

export function describeFetchError(err: unknown, baseUrl: string, timeoutMs?: number): DaemonError {
	if (err instanceof DaemonError) return err;
	if (isAbort(err)) {
		const secs = timeoutMs !== undefined ? ` within ${(timeoutMs / 1000).toFixed(1)}s` : "";
		return new DaemonError("timeout", `llmctld at ${baseUrl} did not answer${secs}`);
	}
	const code = causeCode(err);
	if (code === "ECONNREFUSED" || code === "ENOTFOUND" || code === "EADDRNOTAVAIL" || code === "ECONNRESET" || code === "UND_ERR_SOCKET") {
		return new DaemonError("down", `${START_HINT} (nothing answers at ${baseUrl})`);
	}
	const msg = err instanceof Error ? err.message : String(err);
	return new DaemonError("down", `cannot reach llmctld at ${baseUrl}: ${msg}${code ? ` (${code})` : ""}`);
}

async function errorFromResponse(res: Response): Promise<DaemonError> {
	let text = "";
	try {
		text = await res.text();
	} catch {
		// ignore: the status alone still says something
	}
	let body: ApiErrorBody | undefined;
	try {
		const parsed = JSON.parse(text) as { error?: unknown };
		if (parsed && typeof parsed === "object") {
			const e = parsed.error;
			if (e && typeof e === "object") body = e as ApiErrorBody;
			else if (typeof e === "string") body = { message: e };
		}
	} catch {
		// not JSON
	}
	const message = body?.message || text.trim().slice(0, 300) || `HTTP ${res.status} ${res.statusText}`;
	return new DaemonError("http", message, res.status, body);
}

export class DaemonClient {
	readonly baseUrl: string;

	constructor(baseUrl: string = daemonBaseUrl()) {
		this.baseUrl = baseUrl;
	}

	/** The OpenAI-compatible endpoint pi talks to. */
	get openaiBaseUrl(): string {
		return `${this.baseUrl}/v1`;
	}

	private async request(
		method: string,
		path: string,
		timeoutMs: number,
		signal?: AbortSignal,
	): Promise<Response> {
		const timeout = AbortSignal.timeout(timeoutMs);
		const combined = signal ? AbortSignal.any([timeout, signal]) : timeout;
		let res: Response;
		try {
			res = await fetch(this.baseUrl + path, {
				method,
				headers: { accept: "application/json, application/x-ndjson, text/plain" },
				signal: combined,
			});
		} catch (err) {
			throw describeFetchError(err, this.baseUrl, timeoutMs);
		}
		if (!res.ok) throw await errorFromResponse(res);
		return res;
	}

	private async json<T>(method: string, path: string, timeoutMs: number): Promise<T> {
		const res = await this.request(method, path, timeoutMs);
		let text: string;
		try {
			text = await res.text();
		} catch (err) {
			throw describeFetchError(err, this.baseUrl, timeoutMs);
		}
		try {
			return JSON.parse(text) as T;
		} catch {
			throw new DaemonError("protocol", `llmctld sent a non-JSON answer for ${path}: ${text.slice(0, 200)}`);
		}
	}

	health(timeoutMs = QUICK_TIMEOUT_MS): Promise<{ status: string }> {
		return this.json("GET", "/health", timeoutMs);
	}

	active(timeoutMs = QUICK_TIMEOUT_MS): Promise<ActiveInfo> {
		return this.json("GET", "/active", timeoutMs);
	}

	status(timeoutMs = COMMAND_TIMEOUT_MS): Promise<StatusInfo> {
		return this.json("GET", "/status", timeoutMs);
	}

	/** The newest `limit` requests, oldest first. */
	async activity(limit: number, timeoutMs = COMMAND_TIMEOUT_MS): Promise<ActivityEntry[]> {
		const body = await this.json<{ entries?: ActivityEntry[] }>("GET", `/activity?limit=${limit}`, timeoutMs);
		return Array.isArray(body.entries) ? body.entries : [];
	}

	/** Every saved KV cache. */
	async caches(timeoutMs = COMMAND_TIMEOUT_MS): Promise<SavedCache[]> {
		const body = await this.json<{ caches?: SavedCache[] }>("GET", "/cache", timeoutMs);
		return Array.isArray(body.caches) ? body.caches : [];
	}

	async models(timeoutMs = COMMAND_TIMEOUT_MS): Promise<ModelInfo[]> {
		const body = await this.json<{ models?: ModelInfo[] }>("GET", "/models", timeoutMs);
		return Array.isArray(body.models) ? body.models.filter((m) => m && typeof m.id === "string") : [];
	}

	stop(force = false, timeoutMs = 120_000): Promise<{ stopped: string | null }> {
		return this.json("POST", `/stop${force ? "?force=1" : ""}`, timeoutMs);
	}

	reload(timeoutMs = 60_000): Promise<Record<string, unknown>> {
		return this.json("POST", "/reload", timeoutMs);
	}

	async logs(model: string | undefined, lines: number, timeoutMs = COMMAND_TIMEOUT_MS): Promise<string> {
		const path = `/logs${model ? `/${encodeURIComponent(model)}` : ""}?lines=${lines}`;
		const res = await this.request("GET", path, timeoutMs);
		return res.text();
	}

	/**
	 * POST /switch/<query>?stream=1 and yield its NDJSON events. An early refusal (404, 409,
	 * 503, ...) is thrown as a DaemonError carrying the error body (code, candidates, ...).
	 */
	async *switchStream(query: string, force = false, signal?: AbortSignal): AsyncGenerator<SwitchEvent> {
		const params = force ? "?stream=1&force=1" : "?stream=1";
		yield* this.events(`/switch/${encodeURIComponent(query)}${params}`, undefined, signal);
	}

	/** POST /pull {"repo"} and yield its NDJSON events (resolved, download, progress, verified, done | error). */
	pullStream(repo: string, signal?: AbortSignal): AsyncGenerator<PullEvent> {
		return this.events(`/pull`, JSON.stringify({ repo }), signal) as AsyncGenerator<PullEvent>;
	}

	private async *events(path: string, body: string | undefined, signal?: AbortSignal): AsyncGenerator<SwitchEvent> {
		const idle = new AbortController();
		const combined = signal ? AbortSignal.any([idle.signal, signal]) : idle.signal;
		let timer: NodeJS.Timeout | undefined;
		const arm = () => {
			if (timer) clearTimeout(timer);
			timer = setTimeout(() => idle.abort(new DOMException("idle", "TimeoutError")), STREAM_IDLE_TIMEOUT_MS);
			timer.unref?.();
		};
		arm();
		let res: Response;
		try {
			res = await fetch(`${this.baseUrl}${path}`, {
				method: "POST",
				headers: body
					? { accept: "application/x-ndjson, application/json", "content-type": "application/json" }
					: { accept: "application/x-ndjson, application/json" },
				body,
				signal: combined,
			});
		} catch (err) {
			clearTimeout(timer);
			throw describeFetchError(err, this.baseUrl, STREAM_IDLE_TIMEOUT_MS);
		}
		if (!res.ok) {
			clearTimeout(timer);
			throw await errorFromResponse(res);
		}
		const contentType = res.headers.get("content-type") ?? "";
		try {
			if (!res.body || !contentType.includes("ndjson")) {
				// A daemon that answered with one JSON document (non-streaming): map it to events.
				const text = await res.text();
				for (const line of text.split("\n")) {
					const ev = parseEventLine(line);
					if (ev) yield ev;
				}
				return;
			}
			const decoder = new TextDecoder();
			let buffer = "";
			const reader = res.body.getReader();
			let finished = false;
			try {
				for (;;) {
					const { done, value } = await reader.read();
					if (done) {
						finished = true;
						break;
					}
					arm();
					buffer += decoder.decode(value, { stream: true });
					let nl: number;
					while ((nl = buffer.indexOf("\n")) >= 0) {
						const line = buffer.slice(0, nl);
						buffer = buffer.slice(nl + 1);
						const ev = parseEventLine(line);
						if (ev) yield ev;
					}
				}
				buffer += decoder.decode();
				const ev = parseEventLine(buffer);
				if (ev) yield ev;
			} finally {
				// Stopping early (consumer broke out, or an error): close the connection.
				if (!finished) await reader.cancel().catch(() => undefined);
				reader.releaseLock();
			}
		} catch (err) {
			throw describeFetchError(err, this.baseUrl, STREAM_IDLE_TIMEOUT_MS);
		} finally {
			clearTimeout(timer);
		}
	}
}

function parseEventLine(line: string): SwitchEvent | undefined {
	const trimmed = line.trim();
	if (!trimmed) return undefined;
	try {
		const obj = JSON.parse(trimmed) as unknown;
		if (obj && typeof obj === "object" && typeof (obj as SwitchEvent).event === "string") return obj as SwitchEvent;
		// A plain JSON answer (e.g. {"model": ..., "load_seconds": ...}) means ready.
		if (obj && typeof obj === "object" && typeof (obj as SwitchEvent).model === "string") {
			return { ...(obj as SwitchEvent), event: "ready" };
		}
	} catch {
		// ignore garbage lines
	}
	return undefined;
}
