// The deal board in Debian's headless Chromium (playwright-core). The page, served from its own
// origin, is signed in with a token typed into it, never put in a URL; it shows a live deal over
// gRPC-Web with its price struck beside the deal price and a countdown to its end; a unit sold
// elsewhere (an order through order-service) appears on it; the token outlives a reload of the tab
// and not a sign-out; a token in an old-style link is taken out of the address and not used. A
// screenshot is kept.
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
// Where the page keeps the token (src/token.ts).
const TOKEN_KEY = 'topkart.deal-board.token';

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

// When a deal ends: its expire time, or the first 00:00 UTC after its start if that comes first.
function dealEndMs(deal) {
  const start = new Date(deal.startTime);
  const dailyReset = Date.UTC(start.getUTCFullYear(), start.getUTCMonth(), start.getUTCDate() + 1);
  return Math.min(Date.parse(deal.expireTime), dailyReset);
}

// The seconds a countdown such as `19:58` or `1:02:03` shows; 0 for `ended`.
function seconds(timeLeft) {
  if (timeLeft === 'ended') {
    return 0;
  }
  if (!/^\d+(:\d\d){1,2}$/.test(timeLeft)) {
    throw new Error(`not a time left: ${JSON.stringify(timeLeft)}`);
  }
  return timeLeft.split(':').reduce((total, part) => total * 60 + Number(part), 0);
}

// The static server's access log: every URL asked of it.
const served = [];
const server = createServer(async (request, response) => {
  served.push(request.url);
  const file = FILES[new URL(request.url, 'http://board').pathname];
  if (!file) {
    response.writeHead(404).end();
    return;
  }
  response.writeHead(200, { 'content-type': file[1] }).end(await readFile(join(ROOT, file[0])));
});
await new Promise((resolve) => server.listen(Number(env('BOARD_PORT')), '127.0.0.1', resolve));

const token = env('CUSTOMER_TOKEN');
const board = `http://127.0.0.1:${env('BOARD_PORT')}/?${new URLSearchParams({ api: `http://${env('DEAL_ADDR')}` })}`;
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
  const row = (available) => `tr[data-deal="${deal.name}"][data-available="${available}"]`;

  const context = await browser.newContext();
  const requested = [];
  context.on('request', (request) => requested.push(request.url()));
  const page = await context.newPage();
  page.on('console', (message) => console.error(`page: ${message.text()}`));

  // Signing in on the page.
  await page.goto(board);
  check((await page.getAttribute('#token', 'type')) === 'password', 'the token field is a password field');
  await page.fill('#token', token);
  await page.click('#sign-in button[type=submit]');
  await page.waitForSelector(row(10), { timeout: PATIENCE_MS });
  check((await page.textContent(row(10))).includes('Browser-tested kettle'), 'the page shows the new deal');
  check((await page.inputValue('#token')) === '', 'the token field is emptied once signed in');

  // The deal price, and the regular price struck through beside it.
  const paid = await page.textContent(`${row(10)} td.price strong`);
  const struck = await page.locator(`${row(10)} td.price del, ${row(10)} td.price s`).allTextContents();
  check(paid.includes('999') && !paid.includes('2,000'), `the deal price is shown: ${paid}`);
  check(struck.length === 1 && struck[0].includes('2,000'), `the regular price is struck beside it: ${struck}`);

  // The countdown: near the deal's end, and lower after about two seconds. The one timed wait of
  // the test, since what is measured is time passing.
  const timeLeft = `${row(10)} td.time-left`;
  const first = seconds(await page.textContent(timeLeft));
  const expected = (dealEndMs(deal) - Date.now()) / 1000;
  check(Math.abs(first - expected) <= 2, `the time left (${first} s) matches the deal's end (${expected.toFixed(1)} s)`);
  await page.waitForTimeout(2000);
  const second = seconds(await page.textContent(timeLeft));
  check(first - second >= 1 && first - second <= 3, `the time left counts down: ${first} s, then ${second} s`);

  // A sale elsewhere shows live.
  call(env('ORDER_ADDR'), 'topkart.order.v1.OrderService/CreateOrder', token, {
    order: { deal: deal.name, quantity: 1 },
  });
  await page.waitForSelector(row(9), { timeout: PATIENCE_MS });
  const text = await page.textContent(row(9));
  check(text.includes('9 of 10 left') && text.includes('10% claimed'), `the sale shows on the page: ${text}`);
  check((await page.getAttribute(row(9), 'data-watched')) === 'true', 'the row is kept current by WatchDeal');
  await page.screenshot({ path: env('SCREENSHOT'), fullPage: true });

  // The token outlives a reload of the tab: the board comes back without asking for it.
  await page.reload();
  await page.waitForSelector(row(9), { timeout: PATIENCE_MS });
  check((await page.evaluate((key) => sessionStorage.getItem(key), TOKEN_KEY)) === token,
    'the token is kept in sessionStorage across a reload');
  check(await page.isHidden('#sign-in'), 'a reloaded board does not ask for the token again');

  // Signing out forgets it.
  await page.click('#sign-out');
  await page.waitForSelector('#sign-in', { state: 'visible', timeout: PATIENCE_MS });
  await page.waitForFunction(() => document.querySelectorAll('#deals tr').length === 0, null, { timeout: PATIENCE_MS });
  check((await page.evaluate((key) => sessionStorage.getItem(key), TOKEN_KEY)) === null, 'signing out forgets the token');
  await page.reload();
  await page.waitForSelector('#sign-in', { state: 'visible', timeout: PATIENCE_MS });
  check(await page.isHidden('#board'), 'after signing out, a reload asks for the token');

  check(!page.url().includes(token), 'the token is never in the page address');
  check(requested.some((url) => url.includes(env('DEAL_ADDR'))), 'the page called the API');
  check(requested.every((url) => !url.includes(token)), 'no URL the browser asked for carries the token');
  check(served.every((url) => !url.includes(token)), 'the static server never saw the token');

  // An old-style link with a token (a made-up one: the real token goes in no URL): the board takes
  // it out of the address and does not sign in with it.
  const legacy = await browser.newPage();
  await legacy.goto(`${board}&token=made-up-token-in-a-link`);
  await legacy.waitForSelector('#sign-in', { state: 'visible', timeout: PATIENCE_MS });
  check(!legacy.url().includes('made-up-token'), `a token in the address is taken out of it: ${legacy.url()}`);
  check(new URL(legacy.url()).searchParams.get('api') === `http://${env('DEAL_ADDR')}`, 'the other parameters stay');
  check((await legacy.evaluate((key) => sessionStorage.getItem(key), TOKEN_KEY)) === null,
    'a token in the address is not used');
} catch (err) {
  failures.push(`the board test stopped: ${err}`);
  console.error('FAIL (deal board): the board test stopped:', err);
} finally {
  await browser.close();
  server.close();
}
console.log(`deal board: ${passed} passed, ${failures.length} failed`);
process.exitCode = failures.length === 0 ? 0 : 1;
