#!/usr/bin/env node
// A real Node client of deal-service and order-service, loading proto/ at run time.
//
// It walks the README's flow (an admin creates a deal; a customer watches it, lists deals, orders two
// units with a request_id and sees the change on the watch, retries, tracks the order; the admin
// approves it), then reads the error details of
// refused calls: the google.rpc.Status in the `grpc-status-details-bin` trailer, its ErrorInfo and
// BadRequest, decoded with the vendored subsets of googleapis in rpc/.
//
// Environment: DEAL_ADDR and ORDER_ADDR (host:port, plain text), ADMIN_TOKEN and CUSTOMER_TOKEN (JWTs).
// Prints `node client: N passed, M failed` last and exits 1 when anything failed.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { isDeepStrictEqual } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const REPO = path.resolve(__dirname, '../../..');
const DEADLINE_MS = 10_000;
// How both the services' messages and the error details are turned into plain objects.
const AS_OBJECT = { longs: String, enums: String, defaults: true, oneofs: true };

let passed = 0;
const failures = [];

// Records one check; a failed one is printed at once and fails the run at the end.
function check(condition, what) {
  if (condition) {
    passed += 1;
  } else {
    failures.push(what);
    console.error(`FAIL: ${what}`);
  }
}

function loadServices() {
  const definition = protoLoader.loadSync(['topkart/deal/v1/deal.proto', 'topkart/order/v1/order.proto'], {
    includeDirs: [path.join(REPO, 'proto')],
    keepCase: true,
    ...AS_OBJECT,
  });
  return grpc.loadPackageDefinition(definition).topkart;
}

// The error details' types, parsed file by file from rpc/. Parsing (rather than Root.load) keeps
// protobufjs from swapping its own bundled google/protobuf/any.proto in for the vendored one.
function loadErrorDetails() {
  const root = new protobuf.Root();
  for (const file of ['google/protobuf/any.proto', 'google/rpc/status.proto', 'google/rpc/error_details.proto']) {
    protobuf.parse(fs.readFileSync(path.join(__dirname, 'rpc', file), 'utf8'), root, { keepCase: true });
  }
  root.resolveAll();
  return root;
}

const errorDetails = loadErrorDetails();
const Status = errorDetails.lookupType('google.rpc.Status');

// A call that must fail; returns its code and the Status, ErrorInfo and BadRequest of its error.
// The Status is serialized in the `grpc-status-details-bin` trailer; its `details` are Any messages
// whose type_url ends with the type's full name. Absent parts are null.
async function refusal(call) {
  try {
    await call();
  } catch (err) {
    if (err.code === undefined) throw err;
    const [bytes] = err.metadata.get('grpc-status-details-bin');
    const status = bytes ? Status.toObject(Status.decode(bytes), AS_OBJECT) : null;
    const details = {};
    for (const any of status ? status.details : []) {
      const type = errorDetails.lookupType(any.type_url.slice(any.type_url.lastIndexOf('/') + 1));
      details[type.name] = type.toObject(type.decode(any.value), AS_OBJECT);
    }
    return { code: err.code, status, info: details.ErrorInfo ?? null, badRequest: details.BadRequest ?? null };
  }
  throw new Error('the call succeeded but should have been refused');
}

// Checks that `call` fails with `code`, a Status of the same code and an ErrorInfo of `reason`.
async function checkRefusal(label, call, code, reason) {
  const { code: gotCode, status, info, badRequest } = await refusal(call);
  check(gotCode === code, `${label}: code ${gotCode}, expected ${code}`);
  check(status !== null && status.code === code,
    `${label}: grpc-status-details-bin holds a google.rpc.Status of code ${code}: ${JSON.stringify(status)}`);
  check(info !== null && info.reason === reason, `${label}: ErrorInfo reason ${reason} expected, got ${JSON.stringify(info)}`);
  return { info, badRequest };
}

// A unary call as a promise, with the token and a deadline.
function unary(client, method, request, token) {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + DEADLINE_MS }, (err, reply) =>
      err ? reject(err) : resolve(reply));
  });
}

function timestampIn(seconds) {
  return { seconds: Math.floor(Date.now() / 1000) + seconds, nanos: 0 };
}

function inr(units, nanos = 0) {
  return { currency_code: 'INR', units, nanos };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function run(deals, orders, admin, customer) {
  const createDeal = (product_name, total_units, expiresInSecs) => unary(deals, 'CreateDeal', {
    deal: {
      product_name, total_units, actual_price: inr(9999), final_price: inr(4999, 500_000_000),
      expire_time: timestampIn(expiresInSecs),
    },
  }, admin);
  const createOrder = (deal, quantity, request_id = '', unit_price = null) =>
    unary(orders, 'CreateOrder', { order: { deal, quantity, unit_price }, request_id }, customer);

  // Pages through ListDeals (the live deals) as the customer until it finds `name`.
  const findListedDeal = async (name) => {
    let page_token = '';
    do {
      const page = await unary(deals, 'ListDeals', { page_size: 100, page_token }, customer);
      const deal = page.deals.find((listed) => listed.name === name);
      if (deal) return deal;
      page_token = page.next_page_token;
    } while (page_token);
    return null;
  };

  // An admin creates a deal of 5 units that runs for two hours.
  const deal = await createDeal('Noise-cancelling headphones (node client)', 5, 2 * 3600);
  check(deal.name.startsWith('deals/'), `CreateDeal names the deal deals/...: ${deal.name}`);
  check(deal.state === 'ACTIVE', `the new deal is ACTIVE: ${deal.state}`);
  check(deal.available_units === 5, `the new deal has 5 units available: ${deal.available_units}`);

  // The customer watches it: the deal as it is first, then every change (read below). The call's
  // deadline bounds every wait on it.
  const watchMetadata = new grpc.Metadata();
  watchMetadata.set('authorization', `Bearer ${customer}`);
  const watch = deals.WatchDeal({ name: deal.name }, watchMetadata, { deadline: Date.now() + DEADLINE_MS });
  const watched = watch[Symbol.asyncIterator]();
  const { value: first } = await watched.next();
  check(first?.name === deal.name && first.state === 'ACTIVE' && first.available_units === 5 && first.claimed_percent === 0,
    `WatchDeal first sends the deal as it is, 5 units, 0 %: ${JSON.stringify(first)}`);

  // The customer finds it among the live deals and orders two units at the price shown.
  const listed = await findListedDeal(deal.name);
  check(listed !== null, `ListDeals shows the customer ${deal.name}`);
  const unitPrice = (listed ?? deal).final_price;
  const requestId = crypto.randomUUID();
  const order = await createOrder(deal.name, 2, requestId, unitPrice);
  check(order.name === `orders/${requestId}`, `the order's id is the request_id: ${order.name}`);
  check(order.state === 'PENDING_APPROVAL', `the order is PENDING_APPROVAL: ${order.state}`);
  check(isDeepStrictEqual(order.total_price, inr('9999')),
    `2 units at 4999.5 INR cost 9999 INR: ${JSON.stringify(order.total_price)}`);
  const { value: changed } = await watched.next();
  check(changed?.name === deal.name && changed.available_units === 3 && changed.claimed_percent === 40,
    `the watcher sees the order's change, 3 units left, 40 % claimed: ${JSON.stringify(changed)}`);
  watch.cancel();
  await watched.return();

  // A retry with the same request_id returns the same order and takes no more units.
  const retried = await createOrder(deal.name, 2, requestId, unitPrice);
  check(isDeepStrictEqual(retried, order),
    `the retry returns the first order: ${JSON.stringify(retried)} vs ${JSON.stringify(order)}`);
  const { available_units: unitsLeft } = await unary(deals, 'GetDeal', { name: deal.name }, customer);
  check(unitsLeft === 3, `two orders of one request_id took 2 units, 3 left: ${unitsLeft}`);

  // The customer tracks the order; the admin approves it.
  const tracked = await unary(orders, 'GetOrder', { name: order.name }, customer);
  check(tracked.name === order.name && tracked.state === 'PENDING_APPROVAL',
    `GetOrder shows the pending order: ${JSON.stringify(tracked)}`);
  const approved = await unary(orders, 'ApproveOrder', { name: order.name }, admin);
  check(approved.state === 'APPROVED', `ApproveOrder approves it: ${approved.state}`);

  // More units than are left: FAILED_PRECONDITION, INSUFFICIENT_UNITS, and how many are left.
  const { info } = await checkRefusal('ordering 4 of 3 units left', () => createOrder(deal.name, 4),
    grpc.status.FAILED_PRECONDITION, 'INSUFFICIENT_UNITS');
  check(info?.metadata.available_units === '3',
    `INSUFFICIENT_UNITS says 3 units are available: ${JSON.stringify(info)}`);

  // A deal past its expiry cannot be ordered, even before the expiry worker marks it expired.
  const expiring = await createDeal('Smart watch (node client)', 10, 2);
  await sleep(3000);
  await checkRefusal('ordering an expired deal', () => createOrder(expiring.name, 1),
    grpc.status.FAILED_PRECONDITION, 'DEAL_EXPIRED');

  // Bad input: INVALID_ARGUMENT with a BadRequest that names the bad field.
  const { badRequest } = await checkRefusal('creating a deal of 0 units', () => createDeal('Empty (node client)', 0, 3600),
    grpc.status.INVALID_ARGUMENT, 'INVALID_ARGUMENT');
  const fields = badRequest ? badRequest.field_violations.map((violation) => violation.field) : [];
  check(isDeepStrictEqual(fields, ['deal.total_units']), `the BadRequest names deal.total_units alone: ${fields}`);
}

async function main() {
  const names = ['DEAL_ADDR', 'ORDER_ADDR', 'ADMIN_TOKEN', 'CUSTOMER_TOKEN'];
  const missing = names.filter((name) => !process.env[name]);
  if (missing.length > 0) {
    console.error(`node client: set ${missing.join(', ')}`);
    process.exit(1);
  }
  const { deal: { v1: deal }, order: { v1: order } } = loadServices();
  const credentials = grpc.credentials.createInsecure();
  const deals = new deal.DealService(process.env.DEAL_ADDR, credentials);
  const orders = new order.OrderService(process.env.ORDER_ADDR, credentials);
  try {
    await run(deals, orders, process.env.ADMIN_TOKEN, process.env.CUSTOMER_TOKEN);
  } catch (err) {
    check(false, `unexpected error, the flow stopped: ${err.message}`);
  } finally {
    deals.close();
    orders.close();
  }
  console.log(`node client: ${passed} passed, ${failures.length} failed`);
  process.exitCode = failures.length > 0 ? 1 : 0;
}

main();
