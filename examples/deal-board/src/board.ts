// The live deal board: lists the live deals (ListDeals) and keeps each row current from WatchDeal,
// both over gRPC-Web from another origin than the API (so the API must allow this page's origin:
// --cors-allowed-origins).
//
// Query parameters: `api`, deal-service's URL; `token`, a customer's JWT.
//
// Over HTTP/1.1 a browser opens at most six connections to one origin and each stream holds one,
// so the board watches the WATCHED soonest-ending deals and refreshes the others from ListDeals
// every few seconds; over HTTP/2 (TLS) one connection would carry every stream.

import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { createGrpcWebTransport } from '@connectrpc/connect-web';
import type { Money } from './gen/google/type/money_pb';
import { type Deal, DealService } from './gen/topkart/deal/v1/deal_pb';

const WATCHED = 4;
const REFRESH_MS = 3000;

const params = new URLSearchParams(location.search);
const deals = createClient(DealService, createGrpcWebTransport({ baseUrl: params.get('api') ?? '' }));
const options = { headers: { authorization: `Bearer ${params.get('token') ?? ''}` } };
const body = document.getElementById('deals') as HTMLTableSectionElement;
const status = document.getElementById('status') as HTMLParagraphElement;
const watching = new Set<string>();

function price(money: Money | undefined): string {
  if (!money) {
    return '—';
  }
  const amount = Number(money.units) + money.nanos / 1e9;
  return new Intl.NumberFormat('en-IN', { style: 'currency', currency: money.currencyCode }).format(amount);
}

function row(name: string): HTMLTableRowElement {
  const existing = body.querySelector<HTMLTableRowElement>(`tr[data-deal="${CSS.escape(name)}"]`);
  if (existing) {
    return existing;
  }
  const created = body.insertRow();
  created.dataset.deal = name;
  for (let cell = 0; cell < 4; cell += 1) {
    created.insertCell();
  }
  return created;
}

function render(deal: Deal): void {
  const tr = row(deal.name);
  tr.dataset.available = String(deal.availableUnits);
  tr.dataset.watched = String(watching.has(deal.name));
  const [product, cost, left, claimed] = Array.from(tr.cells);
  product!.textContent = deal.productName;
  cost!.textContent = price(deal.finalPrice);
  left!.textContent = `${deal.availableUnits} of ${deal.totalUnits} left`;
  claimed!.innerHTML = `<div class="bar"><div style="width: ${deal.claimedPercent}%"></div></div>`;
  claimed!.append(`${deal.claimedPercent}% claimed`);
}

async function watch(name: string): Promise<void> {
  watching.add(name);
  try {
    for await (const deal of deals.watchDeal({ name }, options)) {
      render(deal);
    }
  } catch (err) {
    const refusal = ConnectError.from(err);
    if (refusal.code !== Code.Canceled) {
      status.textContent = `watching ${name}: ${Code[refusal.code]} ${refusal.rawMessage}`;
    }
  } finally {
    // Ended (the deal expired) or cut off: the next refresh shows it or takes it off.
    watching.delete(name);
  }
}

async function refresh(): Promise<void> {
  try {
    const page = await deals.listDeals({ pageSize: 100 }, options);
    const live = new Set(page.deals.map((deal) => deal.name));
    for (const tr of Array.from(body.rows)) {
      if (!live.has(tr.dataset.deal ?? '')) {
        tr.remove();
      }
    }
    page.deals.forEach((deal, index) => {
      if (index < WATCHED && !watching.has(deal.name)) {
        void watch(deal.name);
      }
      // A watched row is the stream's to update: a list read may be up to 100 ms older.
      if (!watching.has(deal.name) || !row(deal.name).dataset.available) {
        render(deal);
      }
    });
    status.textContent = `${page.deals.length} live deals, updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    const refusal = ConnectError.from(err);
    status.textContent = `cannot list the deals: ${Code[refusal.code]} ${refusal.rawMessage}`;
  }
}

await refresh();
setInterval(() => void refresh(), REFRESH_MS);
