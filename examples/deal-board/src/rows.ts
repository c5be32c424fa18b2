// The board's table: one row per deal, and the countdown of every row.

import type { Money } from './gen/google/type/money_pb';
import type { Deal } from './gen/topkart/deal/v1/deal_pb';
import { dealEndMs, timeLeft } from './time_left';

const body = document.getElementById('deals') as HTMLTableSectionElement;

function price(money: Money): string {
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
  for (const kind of ['product', 'price', 'time-left', 'units', 'claimed']) {
    created.insertCell().className = kind;
  }
  return created;
}

// The price paid, and beside it the regular price struck through when the deal takes something off.
function showPrice(cell: HTMLTableCellElement, deal: Deal): void {
  const paid = document.createElement('strong');
  paid.textContent = deal.finalPrice ? price(deal.finalPrice) : '—';
  const parts: (Node | string)[] = [paid];
  const actual = deal.actualPrice;
  const final = deal.finalPrice;
  if (actual && final && (actual.units !== final.units || actual.nanos !== final.nanos)) {
    const regular = document.createElement('del');
    regular.title = 'regular price';
    regular.textContent = price(actual);
    parts.push(' ', regular);
  }
  cell.replaceChildren(...parts);
}

function showTimeLeft(tr: HTMLTableRowElement, nowMs: number): void {
  const end = tr.dataset.endsAt;
  const text = end ? timeLeft(Number(end), nowMs) : '—';
  const cell = tr.cells[2]!;
  if (cell.textContent !== text) {
    cell.textContent = text;
  }
}

/** Whether the board shows the deal already. */
export function shown(name: string): boolean {
  return body.querySelector(`tr[data-deal="${CSS.escape(name)}"]`) !== null;
}

/** Shows the deal in its row, making the row if it is new; `watched` marks a row WatchDeal keeps. */
export function render(deal: Deal, watched: boolean): void {
  const tr = row(deal.name);
  tr.dataset.available = String(deal.availableUnits);
  tr.dataset.watched = String(watched);
  const end = dealEndMs(deal);
  tr.dataset.endsAt = end === undefined ? '' : String(end);
  const [product, cost, , left, claimed] = Array.from(tr.cells);
  product!.textContent = deal.productName;
  showPrice(cost!, deal);
  showTimeLeft(tr, Date.now());
  left!.textContent = `${deal.availableUnits} of ${deal.totalUnits} left`;
  claimed!.innerHTML = `<div class="bar"><div style="width: ${deal.claimedPercent}%"></div></div>`;
  claimed!.append(`${deal.claimedPercent}% claimed`);
  tr.cells[2]!.title = end ? `ends ${new Date(end).toLocaleString()}` : '';
}

/** Takes off the rows of deals not in `live`. */
export function keepOnly(live: Set<string>): void {
  for (const tr of Array.from(body.rows)) {
    if (!live.has(tr.dataset.deal ?? '')) {
      tr.remove();
    }
  }
}

/** Empties the board. */
export function clear(): void {
  body.replaceChildren();
}

/** Brings every row's time left up to now. */
export function tick(): void {
  const now = Date.now();
  for (const tr of Array.from(body.rows)) {
    showTimeLeft(tr, now);
  }
}
