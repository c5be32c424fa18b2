// The deal board in Debian's headless Chromium (playwright-core): the page, served from its own
// origin, shows a live deal over gRPC-Web; a unit sold elsewhere (an order through order-service)
// appears on it; a screenshot is kept.
//
// Environment: DEAL_ADDR, ORDER_ADDR, ADMIN_TOKEN, CUSTOMER_TOKEN, BOARD_PORT (the port the page is
// served on, whose origin the API allows), BUF (the buf CLI, to create the deal and order a unit),
// SCREENSHOT (where the picture goes). Prints `deal board: N passed, M failed` last.

import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
// What the page's own origin serves: the page and its bundle.
const FILES = { '/': ['index.html', 'text/html'], '/dist/board.js': ['dist/board.js', 'text/javascript'] };
// How long the page may take to show what it must; a bound on waiting, not a measurement.
const PATIENCE_MS = 20_000;

const env = (name) => {
  if (!process.env[name]) {
    throw new Error(`${name} is not set`);
  }
  return process.env[name];
};

let passed = 0;
const failures = [];
function check(condition, what) {
  if (condition) {
    passed += 1;
  } else {
    failures.push(what);
    console.error(`FAIL (deal board): ${what}`);
  }
}

// One call through buf curl (gRPC, schema from reflection); returns the reply as an object.
function call(addr, method, token, request) {
  const reply = execFileSync(env('BUF'), [
    'curl', '--protocol', 'grpc', '--http2-prior-knowledge',
    '-H', `authorization: Bearer ${token}`, '-d', JSON.stringify(request), `http://${addr}/${method}`,
  ]);
  return JSON.parse(reply.toString());
}

const server = createServer(async (request, response) => {
  const file = FILES[new URL(request.url, 'http://board').pathname];
  if (!file) {
    response.writeHead(404).end();
    return;
  }
  response.writeHead(200, { 'content-type': file[1] }).end(await readFile(join(ROOT, file[0])));
});
await new Promise((resolve) => server.listen(Number(env('BOARD_PORT')), '127.0.0.1', resolve));

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
try {
  // Soonest to expire among the live deals, so it is one the board watches.
  const expire = new Date(Date.now() + 20 * 60 * 1000).toISOString();
  const deal = call(env('DEAL_ADDR'), 'topkart.deal.v1.DealService/CreateDeal', env('ADMIN_TOKEN'), {
    deal: {
      product_name: 'Browser-tested kettle',
      actual_price: { currency_code: 'INR', units: 2000 },
      final_price: { currency_code: 'INR', units: 999 },
      total_units: 10,
      expire_time: expire,
    },
  });

  const page = await browser.newPage();
  page.on('console', (message) => console.error(`page: ${message.text()}`));
  const query = new URLSearchParams({ api: `http://${env('DEAL_ADDR')}`, token: env('CUSTOMER_TOKEN') });
  await page.goto(`http://127.0.0.1:${env('BOARD_PORT')}/?${query}`);
  const row = (available) => `tr[data-deal="${deal.name}"][data-available="${available}"]`;
  await page.waitForSelector(row(10), { timeout: PATIENCE_MS });
  check((await page.textContent(row(10))).includes('Browser-tested kettle'), 'the page shows the new deal');

  call(env('ORDER_ADDR'), 'topkart.order.v1.OrderService/CreateOrder', env('CUSTOMER_TOKEN'), {
    order: { deal: deal.name, quantity: 1 },
  });
  await page.waitForSelector(row(9), { timeout: PATIENCE_MS });
  const text = await page.textContent(row(9));
  check(text.includes('9 of 10 left') && text.includes('10% claimed'), `the sale shows on the page: ${text}`);
  check((await page.getAttribute(row(9), 'data-watched')) === 'true', 'the row is kept current by WatchDeal');
  await page.screenshot({ path: env('SCREENSHOT'), fullPage: true });
} catch (err) {
  failures.push(`the board test stopped: ${err}`);
  console.error('FAIL (deal board): the board test stopped:', err);
} finally {
  await browser.close();
  server.close();
}
console.log(`deal board: ${passed} passed, ${failures.length} failed`);
process.exitCode = failures.length === 0 ? 0 : 1;
