// Compiled with `tsc --noEmit --strict` against the types openapi-typescript generated: the
// checkout workflow's input and output are its Rust types, field by field.
import type { components } from './schema';

type Schemas = components['schemas'];
type Order = Schemas['Order'];

const order: Order = {
  id: 'o-1', customer: 'c-1', items: [{ sku: 'mug', qty: 1 }], card: '4242', address: '1 Way',
};
const start: Schemas['StartCheckoutRequest'] = { input: order, id: 'o-1' };
// @ts-expect-error a quantity is a number
const badQty: Order['items'][number] = { sku: 'mug', qty: 'one' };
// @ts-expect-error the input is an Order, not any JSON
const badInput: Schemas['StartCheckoutRequest'] = { input: { id: 1 } };

function tracking(i: Schemas['CheckoutInstance']): string | undefined {
  const out = i.output;
  // The output is Result<Receipt, CheckoutError>: { Ok: Receipt } or { Err: CheckoutError }.
  if (out && 'Ok' in out) return out.Ok.tracking;
  return undefined;
}

export { start, badQty, badInput, tracking };
