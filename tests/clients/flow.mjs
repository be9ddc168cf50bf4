// start -> get -> search -> journal -> retry through openapi-fetch, typed by the paths that
// openapi-typescript generated from the served document, and a start -> get through the
// checkout's typed operations. Usage: node flow.mjs <base> <failed-id>
import createClient from 'openapi-fetch';
import assert from 'node:assert/strict';

const [base, failed] = process.argv.slice(2);
const client = createClient({ baseUrl: `${base.replace(/\/$/, '')}` });
const ok = (r, what) => {
  assert.ok(!r.error, `${what}: ${JSON.stringify(r.error)}`);
  return r.data;
};

const def = ok(await client.GET('/api/v1/definitions/{name}', { params: { path: { name: 'checkout' } } }), 'definition');
assert.equal(def.name, 'checkout');
const order = { id: 'ts-order', customer: 'ts-customer', items: [{ sku: 'mug', qty: 1 }], card: '4242', address: '1 Node Way' };
const started = ok(await client.POST('/api/v1/instances', { body: { workflow: 'checkout', input: order, id: 'ts-order' } }), 'start');
assert.equal(started.id, 'ts-order');
const got = ok(await client.GET('/api/v1/instances/{id}', { params: { path: { id: 'ts-order' } } }), 'get');
assert.equal(got.workflow, 'checkout');
// The checkout's typed operations (their types are checked by typed.ts).
const typed = { id: 'typed-ts', customer: 'typed-ts-customer', items: [{ sku: 'mug', qty: 2 }], card: '4242', address: '1 Typed Way' };
ok(await client.POST('/api/v1/definitions/checkout/instances', { body: { input: typed, id: 'typed-ts' } }), 'typed start');
const typedGot = ok(await client.GET('/api/v1/definitions/checkout/instances/{id}', { params: { path: { id: 'typed-ts' } } }), 'typed get');
assert.equal(typedGot.input.items[0].qty, 2);
let page = ok(await client.GET('/api/v1/instances', { params: { query: { workflow: 'checkout', id_prefix: 'ts-' } } }), 'search');
assert.deepEqual(page.instances.map((i) => i.id), ['ts-order']);
const end = Date.now() + 30000;
for (;;) {
  page = ok(await client.GET('/api/v1/instances', { params: { query: { attr: { customer: 'ts-customer' } } } }), 'attr search');
  if (page.instances.length === 1 || Date.now() > end) break;
  await new Promise((r) => setTimeout(r, 200));
}
assert.deepEqual(page.instances.map((i) => i.id), ['ts-order'], 'attr filter');
const journal = ok(await client.GET('/api/v1/instances/{id}/journal', { params: { path: { id: failed } } }), 'journal');
assert.ok(journal.entries.some((e) => e.kind === 'step'));
const retried = ok(await client.POST('/api/v1/instances/{id}/retry', { params: { path: { id: failed } }, body: {} }), 'retry');
assert.equal(retried.id, failed);
console.log('typescript client flow: ok');
