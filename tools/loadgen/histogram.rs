//! A histogram of delays that many tasks record into at once, and its quantiles.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use crate::report::Quantiles;

/// Delays recorded from many tasks at once, in buckets of 10 µs below 10 ms, 100 µs below 100 ms
/// and 1 ms below 10 s: quantiles are a bucket's upper bound, within 1 % above 1 ms.
pub struct DelayHistogram {
    buckets: Box<[AtomicU64]>,
}

const FINE_US: u64 = 10_000;
const MEDIUM_US: u64 = 100_000;
const COARSE_US: u64 = 10_000_000;
const FINE_BUCKETS: usize = (FINE_US / 10) as usize;
const MEDIUM_BUCKETS: usize = ((MEDIUM_US - FINE_US) / 100) as usize;
const COARSE_BUCKETS: usize = ((COARSE_US - MEDIUM_US) / 1000) as usize;

impl DelayHistogram {
    pub fn new() -> Self {
        let count = FINE_BUCKETS + MEDIUM_BUCKETS + COARSE_BUCKETS + 1;
        Self { buckets: (0..count).map(|_| AtomicU64::new(0)).collect() }
    }

    pub fn record(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The usual quantiles and how many delays there are.
    pub fn quantiles(&self) -> Quantiles {
        Quantiles {
            count: self.count(),
            p50: self.quantile_ms(0.50),
            p90: self.quantile_ms(0.90),
            p99: self.quantile_ms(0.99),
            max: self.quantile_ms(1.0),
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).sum()
    }

    /// The upper bound, in milliseconds, of the bucket holding quantile `q` (nearest rank); `None`
    /// when nothing was recorded, infinity beyond 10 s.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(upper_bound_us(index).map_or(f64::INFINITY, |us| us as f64 / 1000.0));
            }
        }
        None
    }
}

fn bucket_of(us: u64) -> usize {
    if us < FINE_US {
        (us / 10) as usize
    } else if us < MEDIUM_US {
        FINE_BUCKETS + ((us - FINE_US) / 100) as usize
    } else if us < COARSE_US {
        FINE_BUCKETS + MEDIUM_BUCKETS + ((us - MEDIUM_US) / 1000) as usize
    } else {
        FINE_BUCKETS + MEDIUM_BUCKETS + COARSE_BUCKETS
    }
}

/// `None` for the last bucket, which has none.
fn upper_bound_us(index: usize) -> Option<u64> {
    let index = index as u64;
    let (fine, medium, coarse) = (FINE_BUCKETS as u64, MEDIUM_BUCKETS as u64, COARSE_BUCKETS as u64);
    if index < fine {
        Some((index + 1) * 10)
    } else if index < fine + medium {
        Some(FINE_US + (index - fine + 1) * 100)
    } else if index < fine + medium + coarse {
        Some(MEDIUM_US + (index - fine - medium + 1) * 1000)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_the_upper_bounds_of_their_buckets() {
        let histogram = DelayHistogram::new();
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        histogram.record(Duration::from_micros(15));
        histogram.record(Duration::from_secs(20));
        assert_eq!(histogram.count(), 102);
        assert_eq!(histogram.quantile_ms(0.0), Some(0.02));
        assert_eq!(histogram.quantile_ms(0.5), Some(50.1));
        assert_eq!(histogram.quantile_ms(0.98), Some(99.1));
        assert_eq!(histogram.quantile_ms(0.99), Some(101.0));
        assert_eq!(histogram.quantile_ms(1.0), Some(f64::INFINITY));
        assert_eq!(DelayHistogram::new().quantile_ms(0.5), None);
    }
}
