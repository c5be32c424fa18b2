//! What admission knows of the deals being ordered: those sold out or ended, as the service learns
//! it from deal-service's answers. An order of such a deal is answered FAILED_PRECONDITION at once,
//! without a permit or a database round trip, and the calls waiting to order it are answered as
//! soon as it is known (Shopify's checkout throttle: the queue knows the stock, and a sold-out
//! product ends the wait).
//!
//! An order that names its idempotency key may be the retry of one placed before the deal ran out,
//! which must get that order back: admission never answers it from the board.
//!
//! Sold out is not final: units come back (a cancellation, an abandoned attempt, an expired
//! approval), and they go to the deal's waitlist first. So a sold-out mark lasts [`SOLD_OUT_FOR`]
//! and is renewed by the next refusal: while a flood lasts, one batch of orders every
//! [`SOLD_OUT_FOR`] reaches deal-service and finds out again; a unit that comes back with nobody
//! waiting for it is on sale again within that time (a setting: `Limits::sold_out_for`). Ended is final (an expired deal cannot be
//! changed); its mark is forgotten after [`ENDED_FOR`], and the board keeps at most
//! [`MAX_DEALS`] marks.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use uuid::Uuid;

/// How long a deal found sold out is answered so without asking deal-service again, by default.
pub const SOLD_OUT_FOR: Duration = Duration::from_millis(100);
/// How long an ended deal is remembered.
const ENDED_FOR: Duration = Duration::from_secs(3600);
/// The most deals the board remembers; beyond, the marks closest to their end are dropped.
const MAX_DEALS: usize = 10_000;

/// Why a deal cannot be ordered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// No unit is left (some may come back).
    SoldOut,
    /// The deal has ended, by its expiry or the daily reset.
    Ended,
}

impl Out {
    /// The `ErrorInfo` reason of the refusal.
    pub fn reason(self) -> &'static str {
        match self {
            Out::SoldOut => "SOLD_OUT",
            Out::Ended => "DEAL_EXPIRED",
        }
    }
}

/// What a request orders, read from its encoded message; `None` when it orders no deal's available
/// units (a claim of a waitlist offer, say) or does not decode.
pub type DealOf = fn(&[u8]) -> Option<Ordered>;

/// The deal a request orders, and whether it may be the retry of an order placed before (it names
/// its own idempotency key): such a call must get that order back, not SOLD_OUT, so admission
/// serves it as any other call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ordered {
    pub deal: Uuid,
    pub retriable: bool,
}

/// Which method orders units, and how to read its deal: what makes admission stock-aware.
#[derive(Clone)]
pub struct StockAware {
    pub board: StockBoard,
    /// The HTTP/2 path of the method, `/package.Service/Method`.
    pub method: &'static str,
    pub deal_of: DealOf,
    /// The `ErrorInfo` domain of the service whose method it is.
    pub domain: &'static str,
}

/// Told of a deal marked out.
pub type Listener = Arc<dyn Fn(Uuid, Out) + Send + Sync>;

/// The deals known to be out, shared by a service's handlers (which mark them) and its admission
/// layer (which reads them and answers the waiting).
#[derive(Clone)]
pub struct StockBoard {
    inner: Arc<Board>,
}

impl Default for StockBoard {
    fn default() -> Self {
        Self::new(SOLD_OUT_FOR)
    }
}

struct Board {
    sold_out_for: Duration,
    deals: Mutex<HashMap<Uuid, (Out, Instant)>>,
    /// Told of every new mark: the admission queue, which answers the calls waiting for the deal.
    listeners: Mutex<Vec<Listener>>,
}

impl StockBoard {
    /// A board on which a sold-out mark lasts `sold_out_for`.
    pub fn new(sold_out_for: Duration) -> Self {
        let board = Board { sold_out_for, deals: Mutex::default(), listeners: Mutex::default() };
        Self { inner: Arc::new(board) }
    }

    /// Whether `deal` is known to be out now.
    pub fn out(&self, deal: Uuid) -> Option<Out> {
        let deals = self.inner.deals.lock().unwrap_or_else(PoisonError::into_inner);
        deals.get(&deal).filter(|(_, until)| *until > Instant::now()).map(|(out, _)| *out)
    }

    /// Marks `deal` out (renewing a mark), and tells the listeners.
    pub fn mark(&self, deal: Uuid, out: Out) {
        let until = Instant::now() + if out == Out::Ended { ENDED_FOR } else { self.inner.sold_out_for };
        {
            let mut deals = self.inner.deals.lock().unwrap_or_else(PoisonError::into_inner);
            if deals.len() >= MAX_DEALS && !deals.contains_key(&deal) {
                let now = Instant::now();
                deals.retain(|_, (_, until)| *until > now);
                if deals.len() >= MAX_DEALS
                    && let Some(soonest) = deals.iter().min_by_key(|(_, (_, until))| *until).map(|(id, _)| *id)
                {
                    deals.remove(&soonest);
                }
            }
            // An ended deal stays ended whatever a late answer says.
            if deals.get(&deal).is_some_and(|(known, _)| *known == Out::Ended) {
                return;
            }
            // A mark renewed while it holds tells nobody: the waiting were told when it was made.
            let renewed = deals.get(&deal).is_some_and(|(known, ends)| *known == out && *ends > Instant::now());
            deals.insert(deal, (out, until));
            if renewed {
                return;
            }
        }
        let listeners = self.inner.listeners.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for listener in listeners {
            listener(deal, out);
        }
    }

    /// Calls `listener` with every deal marked from now on.
    pub fn listen(&self, listener: Listener) {
        self.inner.listeners.lock().unwrap_or_else(PoisonError::into_inner).push(listener);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_sold_out_mark_lapses_an_ended_one_stays_and_listeners_hear_of_both() {
        let board = StockBoard::default();
        let heard = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&heard);
        board.listen(Arc::new(move |_, _| {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        let (sold_out, ended) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(board.out(sold_out), None);
        board.mark(sold_out, Out::SoldOut);
        board.mark(ended, Out::Ended);
        assert_eq!((board.out(sold_out), board.out(ended)), (Some(Out::SoldOut), Some(Out::Ended)));
        board.mark(ended, Out::SoldOut);
        assert_eq!(board.out(ended), Some(Out::Ended), "ended is final");
        board.mark(sold_out, Out::SoldOut);
        assert_eq!(heard.load(Ordering::Relaxed), 2, "a renewal tells nobody");
        std::thread::sleep(SOLD_OUT_FOR);
        assert_eq!(board.out(sold_out), None, "units may have come back");
        assert_eq!(board.out(ended), Some(Out::Ended));
    }

    #[test]
    fn the_board_keeps_at_most_its_bound_of_deals() {
        let board = StockBoard::default();
        for _ in 0..MAX_DEALS + 10 {
            board.mark(Uuid::new_v4(), Out::Ended);
        }
        assert!(board.inner.deals.lock().unwrap().len() <= MAX_DEALS);
    }
}
