//! Latency samples and their percentiles (nearest-rank, so p50/p90 are
//! always values that were actually measured).

use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Samples {
    durations: Vec<Duration>,
}

impl Samples {
    pub fn with_capacity(n: usize) -> Samples {
        Samples {
            durations: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.durations.push(d);
    }

    pub fn len(&self) -> usize {
        self.durations.len()
    }

    /// The `p`-th percentile (0 < p <= 100) by the nearest-rank method;
    /// `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.durations.is_empty() {
            return None;
        }
        let mut sorted = self.durations.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, n) - 1])
    }

    pub fn p50(&self) -> Option<Duration> {
        self.percentile(50.0)
    }

    pub fn p90(&self) -> Option<Duration> {
        self.percentile(90.0)
    }
}

/// A p50/p90 pair in milliseconds, as the report and the Jupyter helper give them.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(s: &Samples) -> Option<Summary> {
        Some(Summary {
            p50_ms: ms(s.p50()?),
            p90_ms: ms(s.p90()?),
            n: s.len(),
        })
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(ms: &[u64]) -> Samples {
        let mut s = Samples::default();
        for m in ms {
            s.push(Duration::from_millis(*m));
        }
        s
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = samples(&[10, 1, 9, 2, 8, 3, 7, 4, 6, 5]);
        assert_eq!(s.p50(), Some(Duration::from_millis(5)));
        assert_eq!(s.p90(), Some(Duration::from_millis(9)));
        assert_eq!(s.percentile(100.0), Some(Duration::from_millis(10)));
        assert_eq!(s.percentile(1.0), Some(Duration::from_millis(1)));
    }

    #[test]
    fn single_and_empty() {
        assert_eq!(samples(&[7]).p90(), Some(Duration::from_millis(7)));
        assert_eq!(Samples::default().p50(), None);
        assert!(Summary::of(&Samples::default()).is_none());
    }
}
