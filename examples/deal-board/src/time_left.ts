// How long a deal has left, as the board's countdown shows it.

import { timestampMs } from '@bufbuild/protobuf/wkt';
import { type Deal, Deal_State } from './gen/topkart/deal/v1/deal_pb';

/**
 * When the deal ends, in milliseconds since the epoch: its `expire_time`, or the first 00:00 UTC
 * after its `start_time` if that comes first (the daily reset, which the API does not fold into
 * `expire_time`). 0 for a deal the API already reports EXPIRED; undefined when the reply carries no
 * expire time.
 */
export function dealEndMs(deal: Deal): number | undefined {
  if (deal.state === Deal_State.EXPIRED) {
    return 0;
  }
  if (!deal.expireTime) {
    return undefined;
  }
  const expire = timestampMs(deal.expireTime);
  if (!deal.startTime) {
    return expire;
  }
  const start = new Date(timestampMs(deal.startTime));
  const dailyReset = Date.UTC(start.getUTCFullYear(), start.getUTCMonth(), start.getUTCDate() + 1);
  return Math.min(expire, dailyReset);
}

/**
 * The time from `nowMs` to `endMs` as `m:ss` or `h:mm:ss`, rounded up so that the last second shows
 * `0:01` rather than `ended` while the deal can still be ordered; `ended` from the end on.
 */
export function timeLeft(endMs: number, nowMs: number): string {
  const seconds = Math.ceil((endMs - nowMs) / 1000);
  if (seconds <= 0) {
    return 'ended';
  }
  const two = (n: number) => String(n).padStart(2, '0');
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor(seconds / 60) % 60;
  return hours > 0 ? `${hours}:${two(minutes)}:${two(seconds % 60)}` : `${minutes}:${two(seconds % 60)}`;
}

/**
 * Calls `show` now and then at every whole second of the clock rather than every second from page
 * load: the rows turn together, and a deal that ends on a whole second shows `ended` on it.
 */
export function everySecond(show: () => void): void {
  show();
  setTimeout(() => everySecond(show), 1000 - (Date.now() % 1000));
}
