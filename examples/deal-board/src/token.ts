// Where the board keeps the customer's token: sessionStorage, which belongs to one tab and is gone
// when the tab closes, and never the URL, which reaches the static server's access log, the
// browser's history and anything the address is copied into.

const KEY = 'topkart.deal-board.token';

/** The token this tab signed in with, if any. */
export function storedToken(): string | null {
  return sessionStorage.getItem(KEY);
}

/** Keeps the token for this tab, so that reloading the page keeps the board signed in. */
export function keepToken(token: string): void {
  sessionStorage.setItem(KEY, token);
}

/** Forgets the token (signing out). */
export function forgetToken(): void {
  sessionStorage.removeItem(KEY);
}

/**
 * Removes a `token` query parameter, which older links of the board carried, from the address bar
 * and returns whether there was one. The token is not used: it has already been sent to the static
 * server, and honouring it would keep such links alive.
 */
export function dropTokenFromAddress(): boolean {
  const url = new URL(location.href);
  if (!url.searchParams.has('token')) {
    return false;
  }
  url.searchParams.delete('token');
  history.replaceState(history.state, '', url);
  return true;
}
