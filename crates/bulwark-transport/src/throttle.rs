//! Throttling on the data mover's side: a token bucket over the bytes received, shared by all
//! of a task's streams. The mover simply reads more slowly; HTTP/2 flow control then slows the
//! agent, so nothing buffers up anywhere.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{NaiveTime, Timelike};

/// The manager's rule: a rate, optionally only inside a daily window (local time).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ThrottleRule {
    /// Bytes per second; 0 means unlimited.
    pub bytes_per_s: u64,
    /// `(start, end)`; a window that ends before it starts runs over midnight.
    pub window: Option<(NaiveTime, NaiveTime)>,
}

impl ThrottleRule {
    pub fn parse(bytes_per_s: u64, start: &str, end: &str) -> Result<ThrottleRule, String> {
        let window = match (start.is_empty(), end.is_empty()) {
            (true, true) => None,
            (false, false) => {
                let t = |s: &str| {
                    NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("{s:?} is not a time of day (HH:MM)"))
                };
                Some((t(start)?, t(end)?))
            }
            _ => return Err("a throttling window needs both a start and an end".into()),
        };
        Ok(ThrottleRule { bytes_per_s, window })
    }

    fn applies_at(&self, now: NaiveTime) -> bool {
        match self.window {
            None => true,
            Some((s, e)) if s <= e => now >= s && now < e,
            Some((s, e)) => now >= s || now < e,
        }
    }
}

/// A token bucket that may go into debt: a large message passes at once and the following
/// ones wait until the debt is paid, so the average holds whatever the message sizes.
pub struct Throttle {
    rule: ThrottleRule,
    state: Mutex<(f64, Instant)>,
}

impl Throttle {
    pub fn new(rule: ThrottleRule) -> Throttle {
        Throttle { rule, state: Mutex::new((0.0, Instant::now())) }
    }

    /// How long the caller must wait before taking `bytes` more.
    pub fn delay_for(&self, bytes: u64) -> Duration {
        let rate = self.rule.bytes_per_s as f64;
        if rate == 0.0 {
            return Duration::ZERO;
        }
        let local = chrono::Local::now().time();
        if !self.rule.applies_at(local.with_nanosecond(0).unwrap_or(local)) {
            return Duration::ZERO;
        }
        let mut st = self.state.lock().expect("throttle lock");
        let now = Instant::now();
        // A burst allowance of a tenth of a second keeps short gaps from being lost.
        let burst = rate / 10.0;
        st.0 = (st.0 + rate * now.duration_since(st.1).as_secs_f64()).min(burst);
        st.1 = now;
        st.0 -= bytes as f64;
        if st.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-st.0 / rate)
        }
    }

    /// Blocks the calling thread as [`Throttle::delay_for`] says.
    pub fn take(&self, bytes: u64) {
        let d = self.delay_for(bytes);
        if !d.is_zero() {
            std::thread::sleep(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_over_midnight() {
        let r = ThrottleRule::parse(1, "22:00", "06:00").unwrap();
        let t = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        assert!(r.applies_at(t(23, 0)) && r.applies_at(t(5, 59)));
        assert!(!r.applies_at(t(6, 0)) && !r.applies_at(t(12, 0)));
        let day = ThrottleRule::parse(1, "08:00", "18:00").unwrap();
        assert!(day.applies_at(t(8, 0)) && !day.applies_at(t(18, 0)));
        assert!(ThrottleRule::parse(1, "8", "").is_err());
        assert!(ThrottleRule::parse(1, "25:00", "01:00").is_err());
    }

    #[test]
    fn debt_adds_up_to_the_rate() {
        let t = Throttle::new(ThrottleRule { bytes_per_s: 1_000_000, window: None });
        // 10 MB taken at once must cost about 10 s of waiting in total, whatever the split.
        let total: f64 = (0..100).map(|_| t.delay_for(100_000).as_secs_f64()).fold(0.0, f64::max);
        assert!((9.0..10.5).contains(&total), "{total}");
    }
}
