//! Rate-limited logging of a failure streak, as a pure state machine: the
//! first failure of a streak is logged, then at most one line per
//! [`StreakLog::interval`] while it lasts (with the count so far), and one
//! line when it ends (with the total). During a long API-server outage that
//! is a handful of lines, not one per retry.

use std::time::{Duration, Instant};

/// What to log, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreakLine {
    /// The first failure of a streak.
    Started,
    /// Still failing: `count` failures over `lasted`.
    Ongoing { count: u64, lasted: Duration },
    /// The streak ended after `count` failures over `lasted`.
    Recovered { count: u64, lasted: Duration },
}

#[derive(Debug, Clone)]
pub struct StreakLog {
    interval: Duration,
    /// (start of the streak, failures so far, last line logged)
    streak: Option<(Instant, u64, Instant)>,
}

/// How often an ongoing streak is logged by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

impl Default for StreakLog {
    fn default() -> Self {
        StreakLog::new(DEFAULT_INTERVAL)
    }
}

impl StreakLog {
    pub fn new(interval: Duration) -> StreakLog {
        StreakLog {
            interval,
            streak: None,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// One failure at `now`.
    pub fn failure(&mut self, now: Instant) -> Option<StreakLine> {
        match &mut self.streak {
            None => {
                self.streak = Some((now, 1, now));
                Some(StreakLine::Started)
            }
            Some((start, count, last)) => {
                *count += 1;
                if now.saturating_duration_since(*last) >= self.interval {
                    *last = now;
                    Some(StreakLine::Ongoing {
                        count: *count,
                        lasted: now.saturating_duration_since(*start),
                    })
                } else {
                    None
                }
            }
        }
    }

    /// A success at `now`: ends the streak, if there is one.
    pub fn success(&mut self, now: Instant) -> Option<StreakLine> {
        self.streak
            .take()
            .map(|(start, count, _)| StreakLine::Recovered {
                count,
                lasted: now.saturating_duration_since(start),
            })
    }

    /// Failures in the current streak.
    pub fn failures(&self) -> u64 {
        self.streak.map(|(_, c, _)| c).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_streak_then_one_per_interval_then_one_on_recovery() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut l = StreakLog::new(Duration::from_secs(60));
        assert_eq!(l.success(at(0)), None, "no streak, nothing to say");
        assert_eq!(l.failure(at(0)), Some(StreakLine::Started));
        // A retry every 2 s for 59 s: silent.
        let mut lines = 0;
        for s in 1..30 {
            lines += usize::from(l.failure(at(s * 2000)).is_some());
        }
        assert_eq!(lines, 0);
        assert_eq!(
            l.failure(at(60_000)),
            Some(StreakLine::Ongoing {
                count: 31,
                lasted: Duration::from_secs(60)
            })
        );
        assert_eq!(l.failure(at(61_000)), None);
        assert_eq!(l.failures(), 32);
        assert_eq!(
            l.success(at(70_000)),
            Some(StreakLine::Recovered {
                count: 32,
                lasted: Duration::from_secs(70)
            })
        );
        assert_eq!(l.success(at(71_000)), None, "recovery is logged once");
        assert_eq!(l.failures(), 0);
        // The next streak starts afresh.
        assert_eq!(l.failure(at(80_000)), Some(StreakLine::Started));
    }

    #[test]
    fn a_retry_every_2s_for_a_minute_is_at_most_three_lines() {
        let t0 = Instant::now();
        let mut l = StreakLog::default();
        let mut lines = 0;
        for i in 0..=30u64 {
            lines += usize::from(l.failure(t0 + Duration::from_secs(i * 2)).is_some());
        }
        lines += usize::from(l.success(t0 + Duration::from_secs(61)).is_some());
        assert_eq!(lines, 3, "started, one ongoing at 60 s, recovered");
    }

    #[test]
    fn a_clock_going_backwards_does_not_panic() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut l = StreakLog::new(Duration::from_secs(1));
        l.failure(t0);
        assert_eq!(l.failure(t0 - Duration::from_secs(5)), None);
        assert!(matches!(
            l.success(t0 - Duration::from_secs(5)),
            Some(StreakLine::Recovered { count: 2, .. })
        ));
    }
}
