//! Rate-limited logging of what the guest makes happen.
//!
//! A guest can trigger a device's warning path in a loop (a register write of the wrong
//! width costs it one instruction), and every warning is a line in the engine's log. Each
//! call site of [`guest_warn!`] may log [`BURST`] lines per [`WINDOW`]; the rest are
//! counted and reported as one line when the next window opens.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one call site may log per window.
pub const BURST: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// The budget of one call site.
#[derive(Debug)]
pub struct RateLimit {
    state: Mutex<Window>,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimit {
    /// A fresh budget.
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(Window {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with the number of lines suppressed
    /// since the last one logged, `None` to drop this one.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if w.start.is_none_or(|s| now.duration_since(s) >= WINDOW) {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged >= BURST {
            w.suppressed += 1;
            return None;
        }
        w.logged += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

/// `tracing::warn!` for events the guest causes, limited per call site (see the module
/// documentation). A line after a quiet period carries `suppressed = N`.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        match LIMIT.admit() {
            None => {}
            Some(0) => ::tracing::warn!($($arg)+),
            Some(suppressed) => ::tracing::warn!(suppressed, $($arg)+),
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_lines_are_counted_until_the_next_window() {
        let l = RateLimit::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.admit_at(t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(l.admit_at(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(
            l.admit_at(t0 + WINDOW),
            Some(1000),
            "the count comes with the next line"
        );
        assert_eq!(l.admit_at(t0 + WINDOW), Some(0));
    }
}
