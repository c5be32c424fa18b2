// A TypeScript client of deal-service and order-service, generated from proto/ by protoc-gen-es
// at test time, run over @connectrpc/connect-node's gRPC transport (HTTP/2) or its gRPC-Web
// transport (HTTP/1.1), as the first argument says.
//
// It walks the README's flow (an admin creates a deal; a customer lists the live deals, orders two
// units at the price shown and tracks the order; the admin approves it), then orders more units than
// are left and reads the refusal's google.rpc.ErrorInfo from its details.
//
// Environment: DEAL_ADDR and ORDER_ADDR (host:port, plain text), ADMIN_TOKEN and CUSTOMER_TOKEN.
// Prints `typescript client (TRANSPORT): N passed, M failed` last; exits 1 when anything failed.

import { randomUUID } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, createClient, type Transport } from '@connectrpc/connect';
import { createGrpcTransport, createGrpcWebTransport } from '@connectrpc/connect-node';
import { ErrorInfoSchema } from './gen/google/rpc/error_details_pb.js';
import { MoneySchema } from './gen/google/type/money_pb.js';
import { Deal_State, DealService } from './gen/topkart/deal/v1/deal_pb.js';
import { Order_State, OrderService } from './gen/topkart/order/v1/order_pb.js';

const TRANSPORTS: Record<string, (baseUrl: string) => Transport> = {
  grpc: (baseUrl) => createGrpcTransport({ baseUrl }),
  'grpc-web': (baseUrl) => createGrpcWebTransport({ baseUrl, httpVersion: '1.1' }),
};

function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

const transportName = process.argv[2] ?? '';
const makeTransport = TRANSPORTS[transportName];
if (!makeTransport) {
  throw new Error(`usage: flow.js ${Object.keys(TRANSPORTS).join('|')}`);
}
const deals = createClient(DealService, makeTransport(`http://${required('DEAL_ADDR')}`));
const orders = createClient(OrderService, makeTransport(`http://${required('ORDER_ADDR')}`));
const admin = { headers: { authorization: `Bearer ${required('ADMIN_TOKEN')}` }, timeoutMs: 10_000 };
const customer = { headers: { authorization: `Bearer ${required('CUSTOMER_TOKEN')}` }, timeoutMs: 10_000 };

let passed = 0;
const failures: string[] = [];

// Records one check; a failed one is printed at once and fails the run at the end.
function check(condition: boolean, what: string): void {
  if (condition) {
    passed += 1;
  } else {
    failures.push(what);
    console.error(`FAIL (${transportName}): ${what}`);
  }
}

const inr = (units: bigint, nanos = 0) => create(MoneySchema, { currencyCode: 'INR', units, nanos });

async function flow(): Promise<void> {
  const deal = await deals.createDeal(
    {
      deal: {
        productName: `TypeScript speaker (${transportName})`,
        actualPrice: inr(2999n),
        finalPrice: inr(1499n, 500_000_000),
        totalUnits: 5,
        expireTime: timestampFromDate(new Date(Date.now() + 2 * 3600 * 1000)),
      },
    },
    admin,
  );
  check(/^deals\/[0-9a-f-]{36}$/.test(deal.name), `the deal is named deals/{uuid}: ${deal.name}`);
  check(deal.state === Deal_State.ACTIVE, `the deal is ACTIVE: ${deal.state}`);

  const live = await deals.listDeals({ pageSize: 100 }, customer);
  const shown = live.deals.find((candidate) => candidate.name === deal.name);
  check(shown !== undefined, 'the customer sees the deal among the live ones');

  const requestId = randomUUID();
  const order = await orders.createOrder(
    { requestId, order: { deal: deal.name, quantity: 2, unitPrice: shown?.finalPrice } },
    customer,
  );
  check(order.name === `orders/${requestId}`, `the order is named by its request_id: ${order.name}`);
  check(order.state === Order_State.PENDING_APPROVAL, `the order waits for approval: ${order.state}`);
  check(order.totalPrice?.units === 2999n && order.totalPrice?.nanos === 0, 'the total is 2 × 1499.50 INR');

  const tracked = await orders.getOrder({ name: order.name }, customer);
  check(tracked.quantity === 2, 'the customer tracks the order');
  const approved = await orders.approveOrder({ name: order.name }, admin);
  check(approved.state === Order_State.APPROVED, `the admin approves it: ${approved.state}`);

  try {
    await orders.createOrder({ order: { deal: deal.name, quantity: 4 } }, customer);
    check(false, 'an order of 4 of the 3 units left is refused');
  } catch (err) {
    const refusal = ConnectError.from(err);
    check(refusal.code === Code.FailedPrecondition, `the refusal is FAILED_PRECONDITION: ${Code[refusal.code]}`);
    const [info] = refusal.findDetails(ErrorInfoSchema);
    check(info?.reason === 'INSUFFICIENT_UNITS', `its ErrorInfo reason is INSUFFICIENT_UNITS: ${info?.reason}`);
    check(info?.domain === 'deal.topkart.com', `its domain is deal.topkart.com: ${info?.domain}`);
    check(info?.metadata['available_units'] === '3', `3 units are left: ${info?.metadata['available_units']}`);
  }
}

try {
  await flow();
} catch (err) {
  failures.push(`the flow stopped: ${err}`);
  console.error(`FAIL (${transportName}): the flow stopped:`, err);
}
console.log(`typescript client (${transportName}): ${passed} passed, ${failures.length} failed`);
process.exitCode = failures.length === 0 ? 0 : 1;
