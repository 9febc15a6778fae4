// Loads pi/index.ts outside pi with a recording stand-in for pi's ExtensionAPI, so tests can reach
// what RPC mode does not expose (argument completions, the exact provider config).
//
//   node tests/pi/harness.mjs provider                 -> the last registerProvider() config
//   node tests/pi/harness.mjs complete "<arg prefix>"  -> getArgumentCompletions(prefix)
//
// The extension is loaded with jiti, as pi loads it. Output: one JSON document on stdout.

import { createJiti } from "jiti";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const extPath = process.env.LLMCTL_PI_EXTENSION ?? path.resolve(here, "../../pi/index.ts");

const recorded = { providers: [], commands: {}, events: [] };
const pi = {
	registerProvider(name, config) {
		recorded.providers.push({ name, config: JSON.parse(JSON.stringify(config)) });
	},
	unregisterProvider() {},
	registerCommand(name, options) {
		recorded.commands[name] = options;
	},
	on(event) {
		recorded.events.push(event);
	},
};

const [action = "provider", arg = ""] = process.argv.slice(2);
const started = Date.now();
const jiti = createJiti(import.meta.url, { moduleCache: false });
const mod = await jiti.import(extPath);
const factory = typeof mod === "function" ? mod : mod.default;
await factory(pi);
const factoryMs = Date.now() - started;

let result;
if (action === "provider") {
	result = {
		factoryMs,
		last: recorded.providers.at(-1) ?? null,
		count: recorded.providers.length,
		commands: Object.keys(recorded.commands),
		events: recorded.events,
	};
} else if (action === "complete") {
	const command = recorded.commands.llm;
	result = { items: command?.getArgumentCompletions ? await command.getArgumentCompletions(arg) : null };
} else {
	console.error(`unknown action ${action}`);
	process.exit(2);
}
process.stdout.write(`${JSON.stringify(result)}\n`);
// Timers the extension may have left (none before session_start) must not keep us alive.
process.exit(0);
