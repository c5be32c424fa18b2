// The live deal board: lists the live deals (ListDeals) and keeps each row current from WatchDeal,
// both over gRPC-Web from another origin than the API (so the API must allow this page's origin:
// --cors-allowed-origins).
//
// Query parameter: `api`, deal-service's URL. The customer's token is entered on the page and kept
// for the tab (see token.ts); a `token` parameter of older links is taken out of the address and
// not used.
//
// Over HTTP/1.1 a browser opens at most six connections to one origin and each stream holds one,
// so the board watches the WATCHED soonest-ending deals and refreshes the others from ListDeals
// every few seconds; over HTTP/2 (TLS) one connection would carry every stream.

import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { createGrpcWebTransport } from '@connectrpc/connect-web';
import { DealService } from './gen/topkart/deal/v1/deal_pb';
import { clear, keepOnly, render, shown, tick } from './rows';
import { everySecond } from './time_left';
import { dropTokenFromAddress, forgetToken, keepToken, storedToken } from './token';

const WATCHED = 4;
const REFRESH_MS = 3000;

const api = new URLSearchParams(location.search).get('api') ?? '';
const deals = createClient(DealService, createGrpcWebTransport({ baseUrl: api }));
const signInForm = document.getElementById('sign-in') as HTMLFormElement;
const tokenField = document.getElementById('token') as HTMLInputElement;
const account = document.getElementById('account') as HTMLDivElement;
const table = document.getElementById('board') as HTMLTableElement;
const status = document.getElementById('status') as HTMLParagraphElement;

// Stops the signed-in board: its refreshes and streams. Set while signed in.
let stopBoard: (() => void) | undefined;

// Shows the deals to the holder of `token` until the returned function is called.
function startBoard(token: string): () => void {
  const stop = new AbortController();
  const options = { headers: { authorization: `Bearer ${token}` }, signal: stop.signal };
  const watching = new Set<string>();

  async function watch(name: string): Promise<void> {
    watching.add(name);
    try {
      for await (const deal of deals.watchDeal({ name }, options)) {
        render(deal, true);
      }
    } catch (err) {
      const refusal = ConnectError.from(err);
      if (!stop.signal.aborted && refusal.code !== Code.Canceled) {
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
      if (stop.signal.aborted) {
        return;
      }
      keepOnly(new Set(page.deals.map((deal) => deal.name)));
      page.deals.forEach((deal, index) => {
        if (index < WATCHED && !watching.has(deal.name)) {
          void watch(deal.name);
        }
        // A watched row is the stream's to update: a list read may be up to 100 ms older.
        if (!watching.has(deal.name) || !shown(deal.name)) {
          render(deal, watching.has(deal.name));
        }
      });
      status.textContent = `${page.deals.length} live deal${page.deals.length === 1 ? '' : 's'}, updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      const refusal = ConnectError.from(err);
      if (stop.signal.aborted) {
        return;
      }
      if (refusal.code === Code.Unauthenticated) {
        signOut(`the token was refused (${refusal.rawMessage}): enter a valid one`);
        return;
      }
      status.textContent = `cannot list the deals: ${Code[refusal.code]} ${refusal.rawMessage}`;
    }
  }

  void refresh();
  const timer = setInterval(() => void refresh(), REFRESH_MS);
  return () => {
    clearInterval(timer);
    stop.abort();
    clear();
  };
}

function showSignedIn(signedIn: boolean): void {
  signInForm.hidden = signedIn;
  account.hidden = !signedIn;
  table.hidden = !signedIn;
}

function signIn(token: string): void {
  keepToken(token);
  showSignedIn(true);
  status.textContent = 'loading…';
  stopBoard = startBoard(token);
}

function signOut(why: string): void {
  forgetToken();
  stopBoard?.();
  stopBoard = undefined;
  showSignedIn(false);
  status.textContent = why;
  tokenField.focus();
}

signInForm.addEventListener('submit', (event) => {
  event.preventDefault();
  // What an Authorization header holds may be pasted whole.
  const token = tokenField.value.trim().replace(/^Bearer\s+/i, '');
  tokenField.value = '';
  if (token) {
    signIn(token);
  }
});
document.getElementById('sign-out')!.addEventListener('click', () => signOut('signed out'));

const tokenInAddress = dropTokenFromAddress();
const token = storedToken();
if (token) {
  signIn(token);
} else {
  signOut(
    tokenInAddress
      ? 'the board no longer reads a token from its address (it was removed): enter it here'
      : 'enter a customer token to see the deals',
  );
}
signInForm.querySelector('button')!.disabled = false;
everySecond(tick);
