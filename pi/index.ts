/**
 * llmctl extension for the pi coding agent.
 *
 * - Registers one model, `llmctl/local`, pointing at llmctld's OpenAI-compatible proxy
 *   (http://$LLMCTL_HOST:$LLMCTL_PORT/v1, default http://127.0.0.1:16384/v1). Its metadata
 *   (name, reasoning, input, contextWindow, maxTokens) and OpenAI compat flags come from the
 *   active model's `pi.*` config as reported by GET /active.
 * - Keeps that metadata current: the daemon's `generation` is polled cheaply while pi runs, and
 *   checked before each prompt sent to llmctl/local, so a switch made from the CLI or another pi
 *   is picked up without re-selecting the model (re-registering the provider swaps pi's selected
 *   model object for the new one).
 * - Adds `/llm`: dashboard, `switch [query]`, `stop`, `status`, `logs`, `reload`, with live
 *   load progress (widget + footer status) while a model loads.
 *
 * The daemon being down never breaks or slows pi: the startup probe has a 300 ms timeout, nothing
 * here throws out of the factory or an event handler, and commands say how to start llmctld.
 */

import type {
	ExtensionAPI,
	ExtensionCommandContext,
	ExtensionContext,
	ProviderModelConfig,
} from "@mariozechner/pi-coding-agent";
import {
	type ActiveInfo,
	COMMAND_TIMEOUT_MS,
	DaemonClient,
	DaemonError,
	type ModelInfo,
	type PullEvent,
	QUICK_TIMEOUT_MS,
	STARTUP_TIMEOUT_MS,
	type StatusInfo,
	type SwitchEvent,
} from "./client.ts";
import {
	activityLines,
	formatDuration,
	formatProgress,
	modelLabel,
	modelLines,
	oneLine,
	phaseLabel,
	progressBar,
	statusText,
	summarizeReload,
	tail,
} from "./format.ts";

export const PROVIDER = "llmctl";
export const MODEL_ID = "local";
/** Sent as the Bearer token; llmctld has no auth, but pi requires a key for custom models. */
export const API_KEY = "llmctl";
const UI_KEY = "llmctl";

/** Used when the daemon is unreachable or leaves a field out (mirrors the daemon's defaults). */
export const FALLBACK_MODEL = {
	name: "llmctl local model",
	reasoning: false,
	input: ["text"] as ("text" | "image")[],
	contextWindow: 131072,
	maxTokens: 8192,
};
/** llama-server needs these (pi's localhost defaults are store: true and max_completion_tokens). */
export const FALLBACK_COMPAT: Record<string, unknown> = {
	supportsDeveloperRole: false,
	supportsStore: false,
	maxTokensField: "max_tokens",
};

const DEFAULT_POLL_MS = 2000;
const BUSY_POLL_MS = 500;
const COMPLETION_CACHE_MS = 10_000;
const LOG_LINES = 40;
const ACTIVITY_SHOWN = 5;

function positiveInt(value: unknown, fallback: number): number {
	return typeof value === "number" && Number.isFinite(value) && value > 0 ? Math.floor(value) : fallback;
}

/** The model definition pi gets for `llmctl/local`, from GET /active (or the fallbacks). */
export function buildModelConfig(active: ActiveInfo | undefined): ProviderModelConfig {
	const meta = active?.pi?.model ?? {};
	const compat: Record<string, unknown> = { ...FALLBACK_COMPAT };
	const daemonCompat = active?.pi?.provider_compat;
	if (daemonCompat && typeof daemonCompat === "object" && !Array.isArray(daemonCompat)) {
		for (const [k, v] of Object.entries(daemonCompat)) {
			if (v !== null && v !== undefined) compat[k] = v;
		}
	}
	const input = Array.isArray(meta.input)
		? (meta.input.filter((x) => x === "text" || x === "image") as ("text" | "image")[])
		: [];
	const contextWindow = positiveInt(meta.contextWindow, FALLBACK_MODEL.contextWindow);
	const maxTokens = Math.min(positiveInt(meta.maxTokens, FALLBACK_MODEL.maxTokens), contextWindow);
	let name =
		(typeof meta.name === "string" && meta.name.trim()) ||
		(active?.name ?? "").trim() ||
		(active?.model ?? "").trim() ||
		FALLBACK_MODEL.name;
	if (!active) name = `${FALLBACK_MODEL.name} (llmctld not reachable)`;
	return {
		id: MODEL_ID,
		name,
		api: "openai-completions",
		reasoning: typeof meta.reasoning === "boolean" ? meta.reasoning : FALLBACK_MODEL.reasoning,
		input: input.length ? input : FALLBACK_MODEL.input,
		cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 },
		contextWindow,
		maxTokens,
		compat: compat as ProviderModelConfig["compat"],
	};
}

interface CompletionItem {
	value: string;
	label: string;
	description?: string;
}

const SUBCOMMANDS: CompletionItem[] = [
	{ value: "switch", label: "switch", description: "pick a model, or `switch <query>` to fuzzy-switch" },
	{ value: "status", label: "status", description: "daemon and backend status" },
	{ value: "stop", label: "stop", description: "stop the active model" },
	{ value: "logs", label: "logs", description: "log tail of the active (or named) model" },
	{ value: "reload", label: "reload", description: "re-discover models and re-read config" },
	{ value: "pull", label: "pull", description: "`pull <org/repo[:QUANT]>`: download from Hugging Face" },
];

const USAGE = [
	"Usage: /llm [switch [--force] [query] | stop [--force] | status | logs [model] [-n N] | reload]",
	"  /llm                 dashboard (active model, status, actions)",
	"  /llm switch          pick a model",
	"  /llm switch <query>  switch by fuzzy match (ambiguous → picker)",
	"  /llm stop            stop the active model",
	"  /llm pull <repo>     download a GGUF from Hugging Face (org/name[:QUANT]) and register it",
	"  /llm status          daemon and backend status",
	"  /llm logs [model]    log tail (-n N lines)",
	"  /llm reload          re-discover models",
].join("\n");

type Level = "info" | "warning" | "error";

function say(ctx: ExtensionContext, text: string, level: Level = "info"): void {
	try {
		if (ctx.hasUI) ctx.ui.notify(text, level);
		else if (level === "error") console.error(text);
		else console.log(text);
	} catch {
		// a UI that went away must not break the command
	}
}

function errorText(err: unknown): string {
	if (err instanceof DaemonError) return err.message;
	return err instanceof Error ? err.message : String(err);
}

/** Shows one switch's progress as a widget above the editor plus the footer status. */
class ProgressView {
	private lastWidget = "";
	private lastStatus = "";
	private lastPrinted = "";
	private target: string;
	private from: string | undefined;
	private step = "";
	private status = "";
	private percent: number | null | undefined;
	private shown = false;

	constructor(
		private readonly ctx: ExtensionContext,
		query: string,
	) {
		// Nothing is shown until the daemon accepts the switch: a refusal (ambiguous, busy, ...)
		// leaves no flicker behind.
		this.target = query;
	}

	update(ev: SwitchEvent): void {
		if (ev.model && ev.event !== "stopping") this.target = ev.model;
		switch (ev.event) {
			case "resolved":
				this.step = "resolved";
				this.status = `switching to ${this.target}…`;
				break;
			case "stopping":
				this.from = ev.model;
				this.step = `stopping ${ev.model ?? "the active model"}${ev.reason ? ` (${ev.reason})` : ""}`;
				this.percent = undefined;
				this.status = `stopping ${ev.model ?? "model"} → ${this.target}…`;
				break;
			case "starting":
				this.step = "starting llama-server";
				this.percent = undefined;
				this.status = `starting ${this.target}…`;
				break;
			case "progress": {
				this.step = phaseLabel(ev.phase) || "loading";
				this.percent = ev.percent;
				const pct =
					typeof ev.percent === "number" && Number.isFinite(ev.percent)
						? ` ${Math.floor(Math.max(0, Math.min(100, ev.percent)))}%`
						: "…";
				this.status = `${this.step} ${this.target}${pct}`;
				break;
			}
			default:
				return;
		}
		this.render();
	}

	private render(): void {
		const title = `llmctl: switching to ${this.target}${this.from ? ` (was ${this.from})` : ""}`;
		const bar = progressBar(this.percent);
		const detail = bar ? `${this.step} ${bar}` : `${this.step}…`;
		const status = `llmctl: ${this.status}`;
		try {
			if (this.ctx.hasUI) {
				const widget = [title, `  ${detail}`];
				const key = widget.join("\n");
				if (key !== this.lastWidget) {
					this.lastWidget = key;
					this.shown = true;
					this.ctx.ui.setWidget(UI_KEY, widget);
				}
				if (status !== this.lastStatus) {
					this.lastStatus = status;
					this.ctx.ui.setStatus(UI_KEY, status);
				}
			} else if (this.step !== this.lastPrinted) {
				// Print mode: one line per step, not per percent.
				this.lastPrinted = this.step;
				console.log(`${title}: ${this.step}…`);
			}
		} catch {
			// ignore UI failures
		}
	}

	clear(): void {
		if (!this.shown) return;
		try {
			this.ctx.ui.setWidget(UI_KEY, undefined);
		} catch {
			// ignore
		}
	}
}

type SwitchOutcome =
	| { kind: "ready"; model: string; loadSeconds?: number; alreadyActive: boolean }
	| { kind: "failed"; text: string }
	| { kind: "refused"; err: DaemonError }
	| { kind: "error"; text: string };

class LlmctlExtension {
	private readonly client = new DaemonClient();
	private published: ProviderModelConfig = buildModelConfig(undefined);
	private signature = "";
	private lastActive: ActiveInfo | undefined;
	private daemonUp = false;
	private refreshing: Promise<void> | undefined;
	private switching = false;
	private uiCtx: ExtensionContext | undefined;
	private footer = "";
	private pollTimer: NodeJS.Timeout | undefined;
	private stopped = false;
	private modelCache: { at: number; models: ModelInfo[] } | undefined;
	private readonly pollMs: number;

	constructor(private readonly pi: ExtensionAPI) {
		const raw = process.env.LLMCTL_PI_POLL_MS;
		const n = raw !== undefined && /^\d+$/.test(raw.trim()) ? Number(raw) : DEFAULT_POLL_MS;
		this.pollMs = n;
	}

	// -- provider registration ------------------------------------------------------------------

	private register(model: ProviderModelConfig): void {
		const sig = JSON.stringify(model);
		if (sig === this.signature) return;
		try {
			this.pi.registerProvider(PROVIDER, {
				name: "llmctl",
				baseUrl: this.client.openaiBaseUrl,
				apiKey: API_KEY,
				api: "openai-completions",
				models: [model],
			});
			this.signature = sig;
			this.published = model;
		} catch {
			// A stale runtime (session replaced) or a registry error: keep the old model.
		}
	}

	/** Apply a GET /active answer: publish its metadata if it changed, update the footer. */
	private apply(active: ActiveInfo): void {
		this.daemonUp = true;
		this.lastActive = active;
		this.register(buildModelConfig(active));
		if (!this.switching) this.setFooter(this.footerFor(active));
	}

	/** Ask the daemon for the active model and publish its metadata (single-flight, never throws). */
	refresh(timeoutMs: number): Promise<void> {
		if (this.refreshing) return this.refreshing;
		const run = (async () => {
			try {
				const active = await this.client.active(timeoutMs);
				this.apply(active);
				if (active.state === "starting" && !this.switching) await this.showExternalProgress(active);
			} catch (err) {
				const down = !(err instanceof DaemonError) || err.kind === "down";
				this.daemonUp = !down;
				if (!this.signature) this.register(buildModelConfig(undefined));
				if (!this.switching) {
					this.setFooter(
						down ? "llmctl: daemon not running" : err.kind === "timeout" ? "llmctl: daemon not answering" : "llmctl: daemon error",
					);
				}
			}
		})();
		this.refreshing = run.finally(() => {
			this.refreshing = undefined;
		});
		return this.refreshing;
	}

	/** A load started elsewhere (CLI, another pi): show its progress in the footer. */
	private async showExternalProgress(active: ActiveInfo): Promise<void> {
		try {
			const status = await this.client.status(QUICK_TIMEOUT_MS);
			const progress = formatProgress(status.backend?.progress);
			this.setFooter(`llmctl: loading ${active.model ?? "model"}${progress ? ` ${progress}` : "…"}`);
		} catch {
			// keep the footer as it is
		}
	}

	private footerFor(active: ActiveInfo): string {
		const model = active.model ?? active.backend_model;
		switch (active.state) {
			case "ready":
				return `llmctl: ${model}`;
			case "starting":
				return `llmctl: loading ${model ?? "model"}…`;
			case "stopping":
				return `llmctl: stopping ${model ?? "model"}…`;
			case "failed":
				return `llmctl: ${model ?? "model"} failed to load`;
			default:
				if (active.idle?.unloaded) return `llmctl: ${active.idle.unloaded.model} unloaded (idle) — wakes on the next request`;
				return active.default_model ? `llmctl: idle (default ${active.default_model})` : "llmctl: no model loaded";
		}
	}

	private setFooter(text: string): void {
		const ctx = this.uiCtx;
		if (!ctx || !ctx.hasUI || text === this.footer) return;
		try {
			ctx.ui.setStatus(UI_KEY, text);
			this.footer = text;
		} catch {
			// stale context
		}
	}

	// -- polling ----------------------------------------------------------------------------------

	startPolling(ctx: ExtensionContext): void {
		this.uiCtx = ctx;
		this.stopped = false;
		this.footer = "";
		if (this.lastActive && !this.switching) this.setFooter(this.footerFor(this.lastActive));
		else if (!this.daemonUp) this.setFooter("llmctl: daemon not running");
		if (this.pollMs > 0) this.schedule(this.pollMs);
	}

	stopPolling(): void {
		this.stopped = true;
		if (this.pollTimer) clearTimeout(this.pollTimer);
		this.pollTimer = undefined;
		this.uiCtx = undefined;
	}

	private schedule(ms: number): void {
		if (this.stopped) return;
		if (this.pollTimer) clearTimeout(this.pollTimer);
		this.pollTimer = setTimeout(() => void this.tick(), ms);
		// Never keep pi alive just for this (print mode exits when its work is done).
		this.pollTimer.unref?.();
	}

	private async tick(): Promise<void> {
		this.pollTimer = undefined;
		if (this.stopped) return;
		await this.refresh(QUICK_TIMEOUT_MS);
		const state = this.lastActive?.state;
		const busy = this.daemonUp && (state === "starting" || state === "stopping");
		this.schedule(busy ? Math.min(BUSY_POLL_MS, this.pollMs) : this.pollMs);
	}

	// -- /llm ----------------------------------------------------------------------------------

	async command(args: string, ctx: ExtensionCommandContext): Promise<void> {
		const tokens = args.trim().split(/\s+/).filter(Boolean);
		const sub = (tokens.shift() ?? "").toLowerCase();
		try {
			switch (sub) {
				case "":
				case "dashboard":
					return await this.dashboard(ctx);
				case "switch":
				case "serve":
				case "use": {
					const force = tokens.some((t) => t === "--force" || t === "-f");
					const query = tokens.filter((t) => t !== "--force" && t !== "-f").join(" ");
					return query ? await this.switchTo(ctx, query, force) : await this.pickAndSwitch(ctx);
				}
				case "stop":
					return await this.stop(ctx, tokens.includes("--force") || tokens.includes("-f"));
				case "status":
					return await this.status(ctx);
				case "logs":
				case "log":
					return await this.logs(ctx, tokens);
				case "reload":
					return await this.reload(ctx);
				case "pull":
					return await this.pull(ctx, tokens.join(" "));
				case "help":
				case "--help":
				case "-h":
					say(ctx, USAGE);
					return;
				default:
					say(ctx, `Unknown /llm subcommand "${sub}".\n${USAGE}`, "warning");
			}
		} catch (err) {
			say(ctx, errorText(err), "error");
		}
	}

	async completions(prefix: string): Promise<CompletionItem[] | null> {
		const p = prefix.replace(/^\s+/, "").toLowerCase();
		const models = await this.cachedModels();
		const items: CompletionItem[] = [...SUBCOMMANDS];
		for (const m of models) {
			items.push({
				value: `switch ${m.id}`,
				label: `switch ${m.id}`,
				description: [m.name && m.name !== m.id ? m.name : "", m.active ? "active" : "", m.available === false ? "unavailable" : ""]
					.filter(Boolean)
					.join(" · "),
			});
		}
		const matches = items.filter((i) => i.value.toLowerCase().startsWith(p));
		if (p.startsWith("switch ")) {
			// The daemon matches fuzzily, so offer ids that contain the query too (after prefix hits).
			const q = p.slice("switch ".length).trim();
			for (const i of items) {
				if (i.value.startsWith("switch ") && !matches.includes(i) && i.value.slice(7).toLowerCase().includes(q)) {
					matches.push(i);
				}
			}
		}
		return matches.length ? matches : null;
	}

	private async cachedModels(): Promise<ModelInfo[]> {
		const now = Date.now();
		if (this.modelCache && now - this.modelCache.at < COMPLETION_CACHE_MS) return this.modelCache.models;
		try {
			const models = await this.client.models(STARTUP_TIMEOUT_MS);
			this.modelCache = { at: now, models };
			return models;
		} catch {
			return this.modelCache?.models ?? [];
		}
	}

	private async dashboard(ctx: ExtensionCommandContext): Promise<void> {
		for (;;) {
			const { status, active, text } = await this.overview();
			if (!ctx.hasUI) {
				say(ctx, text);
				return;
			}
			const model = status.backend?.model ?? active?.model ?? null;
			const state = status.backend?.state ?? active?.state;
			const actions: Array<[string, () => Promise<void>]> = [];
			actions.push(["Switch model…", () => this.pickAndSwitch(ctx)]);
			if (model && state !== "stopped") actions.push([`Stop ${model}`, () => this.stop(ctx, false)]);
			actions.push([`Show logs${model ? ` (${model})` : ""}`, () => this.logs(ctx, [])]);
			actions.push(["Reload models and config", () => this.reload(ctx)]);
			actions.push(["Pull a model…", () => this.askAndPull(ctx)]);
			actions.push(["Refresh", async () => undefined]);
			actions.push(["Close", async () => undefined]);
			const choice = await ctx.ui.select(`llmctl\n${text}`, actions.map(([label]) => label));
			if (!choice || choice === "Close") return;
			if (choice === "Refresh") continue;
			const action = actions.find(([label]) => label === choice);
			if (action) await action[1]();
			return;
		}
	}

	private async status(ctx: ExtensionCommandContext): Promise<void> {
		const { status, active, text } = await this.overview();
		const failed = (status.backend?.state ?? active?.state) === "failed";
		say(ctx, text, failed ? "warning" : "info");
	}

	/**
	 * What the dashboard shows, as text: the status block (load progress, idle countdown, pin,
	 * RPC workers), the last requests with tokens/s, and each model's memory need and saved
	 * KV cache. Only /status must answer; the other parts are left out if theirs fails.
	 */
	private async overview(): Promise<{ status: StatusInfo; active: ActiveInfo | undefined; text: string }> {
		// the status first, on its own: it is what the block is about, as of now
		const [status, active] = await Promise.all([
			this.client.status(COMMAND_TIMEOUT_MS),
			this.client.active(COMMAND_TIMEOUT_MS).catch(() => undefined),
		]);
		const [entries, models, caches] = await Promise.all([
			this.client.activity(ACTIVITY_SHOWN, COMMAND_TIMEOUT_MS).catch(() => undefined),
			this.client.models(COMMAND_TIMEOUT_MS).catch(() => undefined),
			this.client.caches(COMMAND_TIMEOUT_MS).catch(() => undefined),
		]);
		if (active) this.apply(active);
		if (models) this.modelCache = { at: Date.now(), models };
		const lines = [statusText(this.client.baseUrl, status, active, this.published), ...activityLines(entries, ACTIVITY_SHOWN), ...modelLines(models, caches)];
		return { status, active, text: lines.join("\n") };
	}

	private async pickAndSwitch(ctx: ExtensionCommandContext, only?: string[], title?: string): Promise<void> {
		let models: ModelInfo[];
		try {
			models = await this.client.models(COMMAND_TIMEOUT_MS);
			this.modelCache = { at: Date.now(), models };
		} catch (err) {
			if (!only) throw err;
			models = only.map((id) => ({ id }));
		}
		if (only) {
			const byId = new Map(models.map((m) => [m.id, m]));
			models = only.map((id) => byId.get(id) ?? { id });
		}
		if (!models.length) {
			say(ctx, "llmctld found no models. Put a model folder with a config.yaml under $LLMCTL_HOME/gguf/ and run /llm reload.", "warning");
			return;
		}
		if (!ctx.hasUI) {
			say(ctx, `${title ?? "Models"}:\n${models.map((m) => `  ${modelLabel(m)}`).join("\n")}\nSwitch with /llm switch <id>.`);
			return;
		}
		const labels = models.map(modelLabel);
		const choice = await ctx.ui.select(title ?? "Switch llmctl model", labels);
		if (!choice) return;
		const picked = models[labels.indexOf(choice)];
		if (!picked) return;
		if (picked.available === false) {
			say(ctx, `${picked.id} is unavailable: ${picked.error ?? "see `llmctl models`"}`, "error");
			return;
		}
		await this.switchTo(ctx, picked.id, false);
	}

	private async switchTo(ctx: ExtensionCommandContext, query: string, force: boolean): Promise<void> {
		if (this.switching) {
			say(ctx, "A model switch is already in progress.", "warning");
			return;
		}
		const outcome = await this.runSwitch(ctx, query, force);
		switch (outcome.kind) {
			case "ready": {
				const meta = this.published;
				const what = outcome.alreadyActive
					? `${outcome.model} is already active`
					: `Switched to ${outcome.model}${outcome.loadSeconds !== undefined ? ` in ${formatDuration(outcome.loadSeconds)}` : ""}`;
				let text = `${what} — llmctl/local is now ${meta.name} (context ${meta.contextWindow}, max output ${meta.maxTokens}).`;
				const current = ctx.model;
				if (current && (current.provider !== PROVIDER || current.id !== MODEL_ID)) {
					text += ` Select it with /model ${PROVIDER}/${MODEL_ID}.`;
				}
				say(ctx, text);
				return;
			}
			case "failed":
			case "error":
				say(ctx, outcome.text, "error");
				return;
			case "refused":
				return this.handleRefusal(ctx, query, outcome.err);
		}
	}

	private async handleRefusal(ctx: ExtensionCommandContext, query: string, err: DaemonError): Promise<void> {
		const body = err.body ?? {};
		const code = err.code;
		if (code === "ambiguous" || (err.status === 409 && Array.isArray(body.candidates))) {
			const candidates = (body.candidates ?? []).filter((c): c is string => typeof c === "string");
			if (!candidates.length) {
				say(ctx, err.message, "error");
				return;
			}
			if (!ctx.hasUI) {
				say(ctx, `"${query}" is ambiguous: ${candidates.join(", ")}. Use /llm switch <id>.`, "warning");
				return;
			}
			return this.pickAndSwitch(ctx, candidates, `"${query}" matches several models — pick one`);
		}
		if (code === "not_found" || err.status === 404) {
			const suggestions = (body.suggestions ?? []).filter((c): c is string => typeof c === "string");
			if (suggestions.length && ctx.hasUI) {
				return this.pickAndSwitch(ctx, suggestions, `No model matches "${query}" — did you mean…`);
			}
			say(
				ctx,
				`No model matches "${query}".${suggestions.length ? ` Did you mean: ${suggestions.join(", ")}?` : " See /llm switch for the list."}`,
				"error",
			);
			return;
		}
		if (code === "busy" || err.status === 409) {
			const n = typeof body.in_flight === "number" ? body.in_flight : undefined;
			const reason = `llmctld refused the switch: ${err.message}${n !== undefined ? ` (${n} request${n === 1 ? "" : "s"} in flight)` : ""}`;
			if (ctx.hasUI) {
				const ok = await ctx.ui.confirm(
					"Model is busy",
					`${reason}\nSwitch anyway? The in-flight requests will be cut off.`,
				);
				if (ok) return this.switchTo(ctx, query, true);
				say(ctx, `${reason}. Try again when they finish, or use /llm switch --force ${query}.`, "warning");
				return;
			}
			say(ctx, `${reason}. Try again when they finish, or use /llm switch --force ${query}.`, "error");
			return;
		}
		say(ctx, `llmctld refused the switch: ${err.message}`, "error");
	}

	private async runSwitch(ctx: ExtensionCommandContext, query: string, force: boolean): Promise<SwitchOutcome> {
		this.switching = true;
		const view = new ProgressView(ctx, query);
		let final: SwitchEvent | undefined;
		let outcome: SwitchOutcome;
		try {
			for await (const ev of this.client.switchStream(query, force)) {
				if (ev.event === "ready" || ev.event === "error") {
					final = ev;
					break;
				}
				view.update(ev);
			}
			if (!final) {
				outcome = { kind: "error", text: "The switch ended without a result (llmctld closed the stream). Check /llm status." };
			} else if (final.event === "ready") {
				outcome = {
					kind: "ready",
					model: final.model ?? query,
					loadSeconds: typeof final.load_seconds === "number" ? final.load_seconds : undefined,
					alreadyActive: final.already_active === true,
				};
			} else {
				const lines = [
					`Loading ${final.model ?? query} failed${final.code ? ` (${final.code})` : ""}: ${oneLine(final.message ?? "no reason given", 500)}`,
				];
				const logTail = tail(final.log_tail, 15);
				if (logTail.length) lines.push("Last log lines:", ...logTail.map((l) => `  ${l}`));
				lines.push(`Full log: /llm logs ${final.model ?? query}`);
				outcome = { kind: "failed", text: lines.join("\n") };
			}
		} catch (err) {
			if (err instanceof DaemonError && err.kind === "http") outcome = { kind: "refused", err };
			else outcome = { kind: "error", text: errorText(err) };
		} finally {
			view.clear();
			this.switching = false;
		}
		// Publish the new model's metadata before reporting, so pi uses it right away.
		await this.refresh(QUICK_TIMEOUT_MS);
		this.modelCache = undefined;
		return outcome;
	}

	/** /llm pull <repo>: the daemon downloads, verifies and registers; progress in the footer. */
	private async pull(ctx: ExtensionCommandContext, repo: string): Promise<void> {
		if (!repo) {
			say(ctx, "Usage: /llm pull <org/repo[:QUANT|FILE]>, e.g. /llm pull unsloth/Qwen3-8B-GGUF:Q4_K_M", "warning");
			return;
		}
		let last: PullEvent | undefined;
		let shown = "";
		try {
			for await (const ev of this.client.pullStream(repo)) {
				last = ev;
				const pct = typeof ev.percent === "number" ? ` ${Math.floor(ev.percent)}%` : "";
				const resumed = ev.event === "resume" && ev.total ? ` (resuming at ${Math.floor((100 * (ev.bytes ?? 0)) / ev.total)}%)` : "";
				const line = ev.event === "progress" || ev.event === "download" || ev.event === "resume" ? `llmctl: pulling ${ev.file}${pct || resumed}` : "";
				if (!line || line === shown) continue;
				shown = line;
				if (ctx.hasUI) {
					ctx.ui.setStatus(UI_KEY, line);
					const bar = progressBar(ev.percent ?? (ev.total ? (100 * (ev.bytes ?? 0)) / ev.total : undefined));
					ctx.ui.setWidget(UI_KEY, [`llmctl: pulling ${repo}`, `  ${ev.file ?? ""} ${bar || "…"}`]);
				} else if (ev.event !== "progress") {
					console.log(line); // print mode: one line per file, not per percent
				}
			}
		} finally {
			if (shown && ctx.hasUI) {
				ctx.ui.setStatus(UI_KEY, undefined);
				ctx.ui.setWidget(UI_KEY, undefined);
			}
		}
		if (last?.event === "done") {
			this.modelCache = undefined;
			say(ctx, `Pulled ${repo} as ${last.id}. Switch to it with /llm switch ${last.id}.`);
		} else {
			say(ctx, `Pulling ${repo} failed: ${last?.message ?? "the stream ended without a result"}`, "error");
		}
	}

	private async askAndPull(ctx: ExtensionCommandContext): Promise<void> {
		const repo = await ctx.ui.input("Pull a GGUF from Hugging Face", "org/repo[:QUANT], e.g. unsloth/Qwen3-8B-GGUF:Q4_K_M");
		if (repo?.trim()) await this.pull(ctx, repo.trim());
	}

	private async stop(ctx: ExtensionCommandContext, force: boolean): Promise<void> {
		try {
			const res = await this.client.stop(force);
			say(ctx, res.stopped ? `Stopped ${res.stopped}.` : "No model was running.");
		} catch (err) {
			if (err instanceof DaemonError && err.status === 409 && !force) {
				const n = typeof err.body?.in_flight === "number" ? err.body.in_flight : undefined;
				const reason = `llmctld refused to stop: ${err.message}${n !== undefined ? ` (${n} request${n === 1 ? "" : "s"} in flight)` : ""}`;
				if (ctx.hasUI && (await ctx.ui.confirm("Model is busy", `${reason}\nStop anyway?`))) {
					return this.stop(ctx, true);
				}
				say(ctx, `${reason}. Use /llm stop --force to stop anyway.`, "warning");
				return;
			}
			throw err;
		} finally {
			await this.refresh(QUICK_TIMEOUT_MS);
		}
	}

	private async logs(ctx: ExtensionCommandContext, tokens: string[]): Promise<void> {
		let lines = LOG_LINES;
		let model: string | undefined;
		for (let i = 0; i < tokens.length; i++) {
			const t = tokens[i]!;
			if ((t === "-n" || t === "--lines") && i + 1 < tokens.length) {
				lines = positiveInt(Number(tokens[++i]), LOG_LINES);
			} else if (/^-n\d+$/.test(t)) {
				lines = positiveInt(Number(t.slice(2)), LOG_LINES);
			} else if (!t.startsWith("-")) {
				model = t;
			}
		}
		const text = (await this.client.logs(model, lines)).replace(/\s+$/, "");
		const which = model ?? this.lastActive?.model ?? "active model";
		say(ctx, `llmctl logs — ${which} (last ${lines} lines)\n${text || "(the log is empty)"}`);
	}

	private async reload(ctx: ExtensionCommandContext): Promise<void> {
		const summary = await this.client.reload();
		this.modelCache = undefined;
		// The active model's pi.* config may have changed too.
		await this.refresh(QUICK_TIMEOUT_MS);
		const text = summarizeReload(summary);
		say(ctx, `Reloaded llmctl models and config.${text ? `\n${text}` : ""}`);
	}

	// -- wiring -----------------------------------------------------------------------------------

	install(): void {
		const pi = this.pi;
		pi.registerCommand("llm", {
			description: "llmctl: local model dashboard — switch, stop, status, logs, reload",
			getArgumentCompletions: (prefix: string) => this.completions(prefix),
			handler: (args: string, ctx: ExtensionCommandContext) => this.command(args, ctx),
		});

		pi.on("session_start", async (_event, ctx) => {
			this.startPolling(ctx);
			// Non-blocking: the factory already fetched once; this catches up after a replacement.
			void this.refresh(QUICK_TIMEOUT_MS);
		});

		pi.on("session_shutdown", async () => {
			this.stopPolling();
		});

		pi.on("model_select", async (event) => {
			if (event.model?.provider === PROVIDER) void this.refresh(QUICK_TIMEOUT_MS);
		});

		// Before a prompt goes to llmctl/local, make sure pi uses the current model's metadata.
		// Bounded by a short timeout; a down daemon answers "connection refused" at once.
		pi.on("before_agent_start", async (_event, ctx) => {
			if (ctx.model?.provider === PROVIDER) await this.refresh(STARTUP_TIMEOUT_MS);
		});
	}

	/** Factory-time setup: one quick probe, then register (with fallbacks if the daemon is down). */
	async init(): Promise<void> {
		await this.refresh(STARTUP_TIMEOUT_MS);
		if (!this.signature) this.register(buildModelConfig(undefined));
	}
}

export default async function llmctlExtension(pi: ExtensionAPI): Promise<void> {
	try {
		const ext = new LlmctlExtension(pi);
		ext.install();
		await ext.init();
	} catch (err) {
		// Never throw from the factory: pi would skip the extension.
		console.error(`llmctl extension: ${errorText(err)}`);
	}
}
