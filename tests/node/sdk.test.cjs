// The official Node `openai` package against a Sluice stack (started by scripts/sdk_test.sh):
// models, plain and streamed chat (with and without include_usage), embeddings with the SDK's
// default encoding (base64), n/seed/stop/logprobs, tool calls, typed errors, and that a 429 Sluice already retried
// is not retried again by the SDK.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const OpenAI = require('openai');

const baseURL = process.env.SLUICE_SDK_BASE_URL;
const apiKey = process.env.SLUICE_SDK_KEY;
const simURL = process.env.SLUICE_SDK_SIM_URL;

// Counts the SDK's HTTP requests, to see its retries.
let sent = 0;
const countingFetch = (...args) => {
  sent += 1;
  return fetch(...args);
};
const client = new OpenAI({ baseURL, apiKey, maxRetries: 2, fetch: countingFetch, timeout: 30000 });
const user = (content) => [{ role: 'user', content }];

test('models: list and retrieve', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes('sim-small'), ids.join(','));
  const m = await client.models.retrieve('sim-small');
  assert.equal(m.id, 'sim-small');
});

test('plain chat completion', async () => {
  const r = await client.chat.completions.create({ model: 'sim-small', messages: user('Hello from Node'), max_tokens: 16 });
  assert.equal(r.object, 'chat.completion');
  assert.ok(r.choices[0].message.content.length > 0);
  assert.ok(r.usage.total_tokens > 0);
  assert.ok(r._request_id, 'x-request-id');
});

test('stream without include_usage: every chunk has a choice, no usage', async () => {
  const stream = await client.chat.completions.create({ model: 'sim-small', messages: user('Stream to Node'), max_tokens: 16, stream: true });
  let text = '';
  let n = 0;
  for await (const chunk of stream) {
    n += 1;
    assert.ok(chunk.choices[0], JSON.stringify(chunk));
    assert.equal(chunk.usage, undefined, JSON.stringify(chunk));
    text += chunk.choices[0].delta.content ?? '';
  }
  assert.ok(n > 2 && text.length > 0);
});

test('stream with include_usage: usage on the last chunk', async () => {
  const stream = await client.chat.completions.create({
    model: 'sim-small', messages: user('Stream to Node'), max_tokens: 16, stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const last = chunks[chunks.length - 1];
  assert.deepEqual(last.choices, []);
  assert.ok(last.usage.total_tokens > 0);
  assert.ok(chunks.slice(0, -1).every((c) => c.usage === null));
});

test('n, seed, stop and logprobs reach the model', async () => {
  const ask = (extra) => client.chat.completions.create({ model: 'sim-small', messages: user('Sample me'), ...extra });
  const r = await ask({ n: 2, seed: 5, logprobs: true, top_logprobs: 2, user: 'u-node', max_completion_tokens: 10 });
  assert.equal(r.choices.length, 2);
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1]);
  const lp = r.choices[0].logprobs.content;
  assert.equal(lp.map((t) => t.token).join(''), r.choices[0].message.content);
  assert.equal(lp[0].top_logprobs.length, 2);
  const again = await ask({ seed: 5, max_completion_tokens: 10 });
  assert.equal(again.choices[0].message.content, r.choices[0].message.content, 'same seed, same answer');
  const second = r.choices[0].message.content.split(' ')[1];
  const cut = await ask({ seed: 5, stop: [` ${second}`] });
  assert.equal(cut.choices[0].finish_reason, 'stop');
  assert.ok(!cut.choices[0].message.content.includes(` ${second}`));
  const stream = await ask({ n: 2, seed: 5, stream: true });
  const texts = ['', ''];
  for await (const chunk of stream) texts[chunk.choices[0].index] += chunk.choices[0].delta.content ?? '';
  assert.ok(texts[0].length > 0 && texts[1].length > 0);
});

test('embeddings with the default encoding equal the float answer', async () => {
  const input = ['alpha', 'beta'];
  const dflt = await client.embeddings.create({ model: 'sim-embed', input });
  const floats = await client.embeddings.create({ model: 'sim-embed', input, encoding_format: 'float' });
  assert.equal(dflt.data.length, 2);
  for (let i = 0; i < 2; i++) {
    const want = floats.data[i].embedding.map(Math.fround);
    assert.equal(dflt.data[i].embedding.length, 16);
    assert.deepEqual(Array.from(dflt.data[i].embedding), want);
  }
});

test('tool calls, plain and streamed', async () => {
  const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
  const r = await client.chat.completions.create({ model: 'sim-small', messages: user('Use get_weather for Oslo'), tools });
  const call = r.choices[0].message.tool_calls[0];
  assert.equal(call.function.name, 'get_weather');
  assert.equal(typeof JSON.parse(call.function.arguments).city, 'string');
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  const stream = await client.chat.completions.create({ model: 'sim-small', messages: user('Use get_weather for Oslo'), tools, stream: true });
  let args = '';
  for await (const chunk of stream) {
    for (const d of chunk.choices[0]?.delta?.tool_calls ?? []) args += d.function?.arguments ?? '';
  }
  assert.equal(args, call.function.arguments);
});

test('typed errors: 401, 400, 404, 429', async () => {
  const bad = new OpenAI({ baseURL, apiKey: 'sk-wrong', maxRetries: 0 });
  await assert.rejects(bad.models.list(), OpenAI.AuthenticationError);
  await assert.rejects(
    client.chat.completions.create({ model: 'sim-small', messages: user('x'), temperature: 9 }),
    OpenAI.BadRequestError);
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: user('x') }),
    OpenAI.NotFoundError);
  await assert.rejects(client.models.retrieve('no-such-model'), OpenAI.NotFoundError);
  await assert.rejects(
    client.chat.completions.create({ model: 'sim-small', messages: user('throttle [[sim:status=429]]') }),
    OpenAI.RateLimitError);
});

test('a 429 Sluice already retried is not retried again by the SDK', async () => {
  await fetch(`${simURL}/sim/reset`, { method: 'POST' });
  const before = sent;
  await assert.rejects(
    client.chat.completions.create({ model: 'sim-small', messages: user('still throttled [[sim:status=429]]') }),
    (e) => e instanceof OpenAI.RateLimitError && e.headers.get('x-should-retry') === 'false');
  assert.equal(sent - before, 1, 'the SDK sent the request once');
  const counters = await (await fetch(`${simURL}/sim/counters`)).json();
  const calls = counters.per_endpoint.chat_completions;
  // One job: at most worker.max_attempts (2 here) x models.max_calls_per_attempt (3).
  assert.ok(calls >= 1 && calls <= 6, `${calls} upstream calls`);
});
