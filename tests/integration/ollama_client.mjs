// The npm `ollama` client against llmctld (run by test_ollama_api.py: node ollama_client.mjs URL).
// Prints one JSON object with what each call returned, for the test to check.
import { Ollama } from "ollama";

const client = new Ollama({ host: process.argv[2] });
const out = {};

out.version = (await client.version()).version;
out.tags = (await client.list()).models.map((m) => m.name);
out.capabilities = (await client.show({ model: "local" })).capabilities;

let parts = 0;
let last;
const stream = await client.chat({
  model: "local",
  messages: [{ role: "user", content: "hi" }],
  stream: true,
  options: { num_predict: 6, temperature: 0 },
});
for await (const part of stream) {
  parts += 1;
  last = part;
}
out.chat = { parts, done: last.done, done_reason: last.done_reason, eval_count: last.eval_count };

const generated = await client.generate({
  model: "local", prompt: "hi", stream: false, options: { num_predict: 4, temperature: 0 },
});
out.generate = { done: generated.done, eval_count: generated.eval_count,
                 response: typeof generated.response };
out.ps = (await client.ps()).models.map((m) => m.name);

try {
  await client.delete({ model: "local" });
  out.delete = { status: 200 };
} catch (e) {
  out.delete = { status: e.status_code, error: e.error ?? String(e) };
}
console.log(JSON.stringify(out));
