//! The scheduler's calendar: when a job is due and whether it may run now. Every function takes
//! the time zone and the instants it reasons about as arguments, so tests drive it with a manual
//! clock in any zone. Starting and stopping sessions is the manager's business, not this module's.

use std::sync::{Mutex, MutexGuard};

use jiff::civil::{Date, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

/// When a job runs (stored as JSON in the config DB and sent over the REST API).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// Every day at `at` ("HH:MM") local time, or only on `weekdays` ("mon".."sun") when not empty.
    Daily {
        at: String,
        #[serde(default)]
        weekdays: Vec<String>,
    },
    /// Every month on `day` (1-31; in shorter months the last day) at `at`.
    Monthly {
        #[schema(minimum = 1, maximum = 31)]
        day: u8,
        at: String,
    },
    /// Every `every_minutes` minutes (>= 1), counted from the job's creation: the first run is one
    /// period after it, so creating a job does not start it.
    Periodic {
        #[schema(minimum = 1)]
        every_minutes: u32,
    },
    /// When a session of the named job ends (any result); never by time.
    After { job: String },
}

/// Hours a job may run in (local time); a window whose end is before its start runs over midnight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Window {
    pub start: String,
    pub end: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ScheduleError {
    ScheduleError::Invalid(msg.into())
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// How far the calendar search walks: a monthly run on the 31st is never more than 32 days from
/// any date, so two months always find one.
const SCAN_DAYS: usize = 64;

fn parse_time(what: &str, s: &str) -> Result<Time, ScheduleError> {
    // jiff's parser would also take seconds and fractions; schedules are to the minute, and a
    // strict shape keeps "7" or "7:5" from meaning something the user did not write.
    let b = s.as_bytes();
    let shape = b.len() == 5 && b[2] == b':' && [0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit());
    let two = |i: usize| ((b[i] - b'0') * 10 + (b[i + 1] - b'0')) as i8;
    let time = if shape { Time::new(two(0), two(3), 0, 0).ok() } else { None };
    time.ok_or_else(|| invalid(format!("{what} {s:?} is not a time of day (HH:MM from 00:00 to 23:59)")))
}

fn parse_weekday(s: &str) -> Result<usize, ScheduleError> {
    WEEKDAYS
        .iter()
        .position(|w| w.eq_ignore_ascii_case(s))
        .ok_or_else(|| invalid(format!("{s:?} is not a weekday (one of {})", WEEKDAYS.join(", "))))
}

/// A schedule with its text parsed. Built on every call: parsing is cheap, and a schedule stored
/// before a validation rule existed then simply never runs instead of panicking.
enum Plan {
    Days { at: Time, on: [bool; 7] },
    Month { day: i8, at: Time },
    Every { nanos: i128 },
    Follows,
}

impl Plan {
    /// This plan's run on the local date `day`, if it has one that day.
    fn run_on(&self, tz: &TimeZone, day: Date) -> Option<Timestamp> {
        let at = match *self {
            Plan::Days { at, on } if on[day.weekday().to_monday_zero_offset() as usize] => at,
            Plan::Month { day: d, at } if day.day() == d.min(day.days_in_month()) => at,
            _ => return None,
        };
        // Compatible disambiguation: a time skipped in spring runs an hour later, a time repeated
        // in autumn runs the first time; either way each local day keeps exactly one run.
        tz.to_timestamp(day.to_datetime(at)).ok()
    }

    /// The first run `want` takes, walking the local days from `from`'s, forward (`fwd`) or back.
    fn scan(&self, tz: &TimeZone, from: Timestamp, fwd: bool, want: impl Fn(Timestamp) -> bool) -> Option<Timestamp> {
        let mut day = tz.to_datetime(from).date();
        for _ in 0..SCAN_DAYS {
            if let Some(t) = self.run_on(tz, day).filter(|&t| want(t)) {
                return Some(t);
            }
            day = if fwd { day.tomorrow() } else { day.yesterday() }.ok()?;
        }
        None
    }
}

impl Schedule {
    fn plan(&self) -> Result<Plan, ScheduleError> {
        Ok(match self {
            Schedule::Daily { at, weekdays } => {
                let mut on = [weekdays.is_empty(); 7];
                for w in weekdays {
                    on[parse_weekday(w)?] = true;
                }
                Plan::Days { at: parse_time("at", at)?, on }
            }
            Schedule::Monthly { day, at } if (1..=31).contains(day) => {
                Plan::Month { day: *day as i8, at: parse_time("at", at)? }
            }
            Schedule::Monthly { day, .. } => {
                return Err(invalid(format!("day {day} is not a day of the month (1 to 31; 31 means the last day)")))
            }
            Schedule::Periodic { every_minutes: 0 } => {
                return Err(invalid("every_minutes is 0; it must be at least 1"))
            }
            Schedule::Periodic { every_minutes } => Plan::Every { nanos: i128::from(*every_minutes) * 60_000_000_000 },
            Schedule::After { job } if job.trim().is_empty() => {
                return Err(invalid("an \"after\" schedule needs the name of the job it follows"))
            }
            Schedule::After { .. } => Plan::Follows,
        })
    }

    /// Checks times, weekdays, day of month, minutes; clear messages naming the bad value.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        self.plan().map(|_| ())
    }

    /// The first run strictly after `after`, in `tz`; `anchor` is when the job was created
    /// (Periodic counts from it). `None` for `After` schedules and invalid ones.
    pub fn next_after(&self, tz: &TimeZone, anchor: Timestamp, after: Timestamp) -> Option<Timestamp> {
        match self.plan().ok()? {
            Plan::Every { nanos } => {
                let since = after.as_nanosecond() - anchor.as_nanosecond();
                let k = if since < 0 { 1 } else { since / nanos + 1 };
                Timestamp::from_nanosecond(anchor.as_nanosecond() + k * nanos).ok()
            }
            Plan::Follows => None,
            plan => plan.scan(tz, after, true, |t| t > after),
        }
    }

    /// When the job next starts on its own after `now`: the first run after it that `window`
    /// (if any) lets start; the scheduler's attempts outside the window are refused. `None`
    /// for `After` schedules, invalid ones, and windows no run of the next year falls into.
    pub fn next_run(
        &self,
        tz: &TimeZone,
        anchor: Timestamp,
        now: Timestamp,
        window: Option<&Window>,
    ) -> Option<Timestamp> {
        let mut t = self.next_after(tz, anchor, now)?;
        let limit = now + SignedDuration::from_hours(366 * 24);
        while window.is_some_and(|w| !w.contains(tz, t)) {
            t = self.next_after(tz, anchor, t)?;
            if t > limit {
                return None;
            }
        }
        Some(t)
    }

    /// What the scheduler starts at `now` given the last time it considered (`last_check`):
    /// the latest due run in (last_check, now], or None. After downtime with several missed
    /// runs this returns one (the latest), so a job starts once, not N times.
    pub fn due(&self, tz: &TimeZone, anchor: Timestamp, last_check: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let latest = match self.plan().ok()? {
            // Computed directly: a one-minute job after a month down must not walk 43,200 runs.
            Plan::Every { nanos } => {
                let k = (now.as_nanosecond() - anchor.as_nanosecond()).div_euclid(nanos);
                if k < 1 {
                    return None;
                }
                Timestamp::from_nanosecond(anchor.as_nanosecond() + k * nanos).ok()?
            }
            Plan::Follows => return None,
            plan => plan.scan(tz, now, false, |t| t <= now)?,
        };
        (latest > last_check).then_some(latest)
    }
}

impl Window {
    fn bounds(&self) -> Result<(Time, Time), ScheduleError> {
        let start = parse_time("window start", &self.start)?;
        let end = parse_time("window end", &self.end)?;
        if start == end {
            return Err(invalid(format!(
                "window {} to {} is empty; leave the window out to let the job run at any time",
                self.start, self.end
            )));
        }
        Ok((start, end))
    }

    pub fn validate(&self) -> Result<(), ScheduleError> {
        self.bounds().map(|_| ())
    }

    /// Whether `t` is inside the window (an invalid window contains nothing).
    pub fn contains(&self, tz: &TimeZone, t: Timestamp) -> bool {
        let Ok((start, end)) = self.bounds() else { return false };
        let now = tz.to_datetime(t).time();
        if start < end {
            start <= now && now < end
        } else {
            now >= start || now < end
        }
    }

    /// For a session running at `t` (inside the window), when the window closes (the session is
    /// then stopped and marked). If `t` is outside, the next opening is not this function's job: None.
    pub fn closes_after(&self, tz: &TimeZone, t: Timestamp) -> Option<Timestamp> {
        if !self.contains(tz, t) {
            return None;
        }
        let (start, end) = self.bounds().ok()?;
        let local = tz.to_datetime(t);
        let day = if start > end && local.time() >= start { local.date().tomorrow().ok()? } else { local.date() };
        let close = tz.to_ambiguous_timestamp(day.to_datetime(end));
        match close.offset() {
            // The wall clock jumps over `end`: the window closes at the jump, when `contains`
            // turns false, not an hour later as compatible disambiguation would have it.
            AmbiguousOffset::Gap { .. } => tz.following(close.earlier().ok()?).next().map(|tr| tr.timestamp()),
            // In a fold, the first time the clock shows `end`.
            _ => close.compatible().ok(),
        }
    }
}

/// The scheduler's notion of now; tests drive a manual one.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock tests move by hand.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new(t: Timestamp) -> Self {
        ManualClock(Mutex::new(t))
    }

    pub fn set(&self, t: Timestamp) {
        *self.lock() = t;
    }

    pub fn advance(&self, d: SignedDuration) {
        let mut now = self.lock();
        *now += d;
    }

    // A test that panicked while holding the lock still left a whole Timestamp behind.
    fn lock(&self) -> MutexGuard<'_, Timestamp> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn local(tz: &TimeZone, (y, mo, d): (i16, i8, i8), h: i8, mi: i8) -> Timestamp {
        tz.to_timestamp(date(y, mo, d).at(h, mi, 0, 0)).unwrap()
    }

    fn daily(at: &str, weekdays: &[&str]) -> Schedule {
        Schedule::Daily { at: at.into(), weekdays: weekdays.iter().map(|w| w.to_string()).collect() }
    }

    /// `n` successive runs after `from`.
    fn runs(s: &Schedule, tz: &TimeZone, anchor: Timestamp, from: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out: Vec<Timestamp> = Vec::new();
        for _ in 0..n {
            out.push(s.next_after(tz, anchor, out.last().copied().unwrap_or(from)).unwrap());
        }
        out
    }

    fn utcs(list: &[&str]) -> Vec<Timestamp> {
        list.iter().map(|s| utc(s)).collect()
    }

    #[test]
    fn daily_with_weekdays_skips_the_weekend() {
        let s = daily("22:00", &["mon", "tue", "Wed", "thu", "FRI"]);
        let got = runs(&s, &TimeZone::UTC, Timestamp::UNIX_EPOCH, utc("2026-01-01T21:00:00Z"), 4);
        let want = ["2026-01-01T22:00:00Z", "2026-01-02T22:00:00Z", "2026-01-05T22:00:00Z", "2026-01-06T22:00:00Z"];
        assert_eq!(got, utcs(&want));
        let every_day = runs(&daily("22:00", &[]), &TimeZone::UTC, Timestamp::UNIX_EPOCH, utc(want[1]), 2);
        assert_eq!(every_day, utcs(&["2026-01-03T22:00:00Z", "2026-01-04T22:00:00Z"]));
    }

    #[test]
    fn monthly_clamps_to_the_last_day_of_shorter_months() {
        let (tz, epoch) = (TimeZone::UTC, Timestamp::UNIX_EPOCH);
        let day31 = Schedule::Monthly { day: 31, at: "01:00".into() };
        let want = ["2026-01-31T01:00:00Z", "2026-02-28T01:00:00Z", "2026-03-31T01:00:00Z", "2026-04-30T01:00:00Z"];
        assert_eq!(runs(&day31, &tz, epoch, utc("2026-01-15T00:00:00Z"), 4), utcs(&want));
        assert_eq!(day31.next_after(&tz, epoch, utc("2028-02-01T00:00:00Z")), Some(utc("2028-02-29T01:00:00Z")));
        let day30 = Schedule::Monthly { day: 30, at: "01:00".into() };
        let want = ["2026-02-28T01:00:00Z", "2026-03-30T01:00:00Z", "2026-04-30T01:00:00Z"];
        assert_eq!(runs(&day30, &tz, epoch, utc("2026-01-30T01:00:00Z"), 3), utcs(&want));
    }

    #[test]
    fn periodic_counts_from_the_anchor() {
        let (s, anchor) = (Schedule::Periodic { every_minutes: 90 }, utc("2026-01-01T00:00:00Z"));
        let want = ["2026-01-01T01:30:00Z", "2026-01-01T03:00:00Z", "2026-01-01T04:30:00Z"];
        assert_eq!(runs(&s, &TimeZone::UTC, anchor, anchor, 3), utcs(&want));
        assert_eq!(s.next_after(&TimeZone::UTC, anchor, utc("2025-12-31T00:00:00Z")), Some(utc(want[0])));
        let after = Schedule::After { job: "nightly".into() };
        assert_eq!(after.next_after(&TimeZone::UTC, anchor, anchor), None);
        assert_eq!(after.due(&TimeZone::UTC, anchor, anchor, utc("2026-02-01T00:00:00Z")), None);
    }

    #[test]
    fn daily_across_spring_forward_runs_once_an_hour_later() {
        let tz = berlin();
        let got = runs(&daily("02:30", &[]), &tz, Timestamp::UNIX_EPOCH, utc("2026-03-27T12:00:00Z"), 3);
        // 02:30 CET, then the skipped 02:30 as 03:30 CEST (the same UTC instant), then 02:30 CEST.
        assert_eq!(got, utcs(&["2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"]));
        assert_eq!(tz.to_datetime(got[1]), date(2026, 3, 29).at(3, 30, 0, 0));
    }

    #[test]
    fn daily_across_fall_back_runs_at_the_first_0230_only() {
        let (tz, s, epoch) = (berlin(), daily("02:30", &[]), Timestamp::UNIX_EPOCH);
        let got = runs(&s, &tz, epoch, utc("2026-10-24T12:00:00Z"), 2);
        assert_eq!(got, utcs(&["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]));
        assert_eq!(s.due(&tz, epoch, utc("2026-10-25T00:29:00Z"), utc("2026-10-25T00:31:00Z")), Some(got[0]));
        // The second 02:30 (CET) is the same local day: not due again.
        assert_eq!(s.due(&tz, epoch, utc("2026-10-25T01:29:00Z"), utc("2026-10-25T01:31:00Z")), None);
    }

    #[test]
    fn periodic_hourly_across_fall_back_is_one_absolute_hour_apart() {
        let (tz, anchor) = (berlin(), utc("2026-10-24T22:00:00Z"));
        let got = runs(&Schedule::Periodic { every_minutes: 60 }, &tz, anchor, anchor, 4);
        assert!(got.windows(2).all(|w| w[1] - w[0] == SignedDuration::from_hours(1)), "{got:?}");
        assert_eq!(got.iter().filter(|&&t| tz.to_datetime(t).hour() == 2).count(), 2, "{got:?}");
    }

    #[test]
    fn downtime_starts_only_the_latest_missed_daily_run() {
        let (tz, s, epoch) = (berlin(), daily("22:00", &[]), Timestamp::UNIX_EPOCH);
        let (down, up) = (local(&tz, (2026, 6, 1), 12, 0), local(&tz, (2026, 6, 4), 12, 0));
        assert_eq!(s.due(&tz, epoch, down, up), Some(local(&tz, (2026, 6, 3), 22, 0)));
        assert_eq!(s.next_after(&tz, epoch, up), Some(local(&tz, (2026, 6, 4), 22, 0)));
        assert_eq!(s.due(&tz, epoch, up, local(&tz, (2026, 6, 4), 21, 59)), None);
        assert_eq!(s.due(&tz, epoch, up, local(&tz, (2026, 6, 4), 22, 0)), Some(local(&tz, (2026, 6, 4), 22, 0)));
    }

    #[test]
    fn downtime_starts_only_the_latest_missed_periodic_run() {
        let (tz, anchor) = (TimeZone::UTC, utc("2026-06-01T00:00:00Z"));
        let every15 = Schedule::Periodic { every_minutes: 15 };
        let due = every15.due(&tz, anchor, utc("2026-06-01T08:05:00Z"), utc("2026-06-01T18:05:00Z"));
        assert_eq!(due, Some(utc("2026-06-01T18:00:00Z")));
        assert_eq!(every15.due(&tz, anchor, anchor, utc("2026-06-01T00:10:00Z")), None);
        assert_eq!(every15.due(&tz, anchor, utc("2026-06-01T18:00:00Z"), utc("2026-06-01T18:14:59Z")), None);
        let every1 = Schedule::Periodic { every_minutes: 1 };
        let due = every1.due(&tz, anchor, utc("2026-06-01T00:00:30Z"), utc("2026-07-01T00:00:30Z"));
        assert_eq!(due, Some(utc("2026-07-01T00:00:00Z")));
    }

    #[test]
    fn next_run_is_the_first_run_the_window_lets_start() {
        let (tz, epoch) = (TimeZone::UTC, Timestamp::UNIX_EPOCH);
        let night = Window { start: "22:00".into(), end: "06:00".into() };
        let now = utc("2026-06-01T12:00:00Z");
        // Monday noon: that evening, window or not.
        let weekdays = daily("22:00", &["mon", "tue", "wed", "thu", "fri"]);
        assert_eq!(weekdays.next_run(&tz, epoch, now, None), Some(utc("2026-06-01T22:00:00Z")));
        assert_eq!(weekdays.next_run(&tz, epoch, now, Some(&night)), Some(utc("2026-06-01T22:00:00Z")));
        // Every 90 minutes from midnight: 13:30, 15:00, … the first inside the night is 22:30.
        let every = Schedule::Periodic { every_minutes: 90 };
        let anchor = utc("2026-06-01T00:00:00Z");
        assert_eq!(every.next_run(&tz, anchor, now, None), Some(utc("2026-06-01T13:30:00Z")));
        assert_eq!(every.next_run(&tz, anchor, now, Some(&night)), Some(utc("2026-06-01T22:30:00Z")));
        // A daily run the window never lets start has no next run.
        assert_eq!(daily("12:00", &[]).next_run(&tz, epoch, now, Some(&night)), None);
        assert_eq!(Schedule::After { job: "nightly".into() }.next_run(&tz, epoch, now, None), None);
        // In a zone of its own.
        let b = berlin();
        let at_berlin = daily("22:00", &[]).next_run(&b, epoch, now, None);
        assert_eq!(at_berlin, Some(local(&b, (2026, 6, 1), 22, 0)));
    }

    #[test]
    fn overnight_window_contains_the_night_and_closes_next_morning() {
        let (tz, w) = (berlin(), Window { start: "22:00".into(), end: "06:00".into() });
        let at = |d: i8, h: i8, m: i8| local(&tz, (2026, 6, d), h, m);
        assert!(w.contains(&tz, at(1, 23, 0)) && w.contains(&tz, at(2, 5, 59)) && w.contains(&tz, at(1, 22, 0)));
        assert!(!w.contains(&tz, at(2, 6, 0)) && !w.contains(&tz, at(1, 12, 0)));
        assert_eq!(w.closes_after(&tz, at(1, 23, 0)), Some(at(2, 6, 0)));
        assert_eq!(w.closes_after(&tz, at(2, 5, 0)), Some(at(2, 6, 0)));
        assert_eq!(w.closes_after(&tz, at(1, 12, 0)), None);
        let day = Window { start: "08:00".into(), end: "18:00".into() };
        assert_eq!(day.closes_after(&tz, at(1, 9, 0)), Some(at(1, 18, 0)));
        assert_eq!(day.closes_after(&tz, at(1, 19, 0)), None);
    }

    #[test]
    fn window_close_across_dst_is_the_right_instant() {
        let (tz, w) = (berlin(), Window { start: "22:00".into(), end: "06:00".into() });
        // 06:00 CEST after a short night, 06:00 CET after a long one.
        assert_eq!(w.closes_after(&tz, utc("2026-03-28T22:00:00Z")), Some(utc("2026-03-29T04:00:00Z")));
        assert_eq!(w.closes_after(&tz, utc("2026-10-24T21:00:00Z")), Some(utc("2026-10-25T05:00:00Z")));
        // 02:30 never shows on the clock that night: the window closes when the clock jumps past it.
        let short = Window { start: "22:00".into(), end: "02:30".into() };
        assert_eq!(short.closes_after(&tz, utc("2026-03-28T22:00:00Z")), Some(utc("2026-03-29T01:00:00Z")));
        assert!(short.contains(&tz, utc("2026-03-29T00:59:00Z")));
        assert!(!short.contains(&tz, utc("2026-03-29T01:00:00Z")));
    }

    #[test]
    fn validation_names_the_bad_value() {
        let rejects = |s: Schedule, bad: &str| match s.validate() {
            Err(ScheduleError::Invalid(m)) => assert!(m.contains(bad), "{m:?} should name {bad:?}"),
            Ok(()) => panic!("{s:?} was accepted"),
        };
        for bad in ["24:00", "7", "7:5x", "07:60", "7:05", " 07:00", "07:00:00", ""] {
            rejects(daily(bad, &[]), &format!("{bad:?}"));
            rejects(Schedule::Monthly { day: 1, at: bad.into() }, &format!("{bad:?}"));
        }
        rejects(daily("07:00", &["mon", "mo"]), "\"mo\"");
        rejects(Schedule::Monthly { day: 0, at: "07:00".into() }, "day 0");
        rejects(Schedule::Monthly { day: 32, at: "07:00".into() }, "day 32");
        rejects(Schedule::Periodic { every_minutes: 0 }, "every_minutes");
        rejects(Schedule::After { job: " ".into() }, "after");
        for good in [daily("00:00", &["SUN"]), daily("23:59", &[]), Schedule::Monthly { day: 31, at: "07:00".into() }] {
            assert_eq!(good.validate(), Ok(()));
        }
        assert_eq!(Schedule::Periodic { every_minutes: 1 }.validate(), Ok(()));
        assert!(Window { start: "22:00".into(), end: "24:00".into() }.validate().is_err());
        assert!(Window { start: "08:00".into(), end: "08:00".into() }.validate().is_err());
        assert_eq!(Window { start: "22:00".into(), end: "06:00".into() }.validate(), Ok(()));
    }

    #[test]
    fn json_shape_round_trips() {
        let cases = [
            (r#"{"kind":"daily","at":"22:00","weekdays":["mon"]}"#, daily("22:00", &["mon"])),
            (r#"{"kind":"monthly","day":31,"at":"01:00"}"#, Schedule::Monthly { day: 31, at: "01:00".into() }),
            (r#"{"kind":"periodic","every_minutes":15}"#, Schedule::Periodic { every_minutes: 15 }),
            (r#"{"kind":"after","job":"nightly"}"#, Schedule::After { job: "nightly".into() }),
        ];
        for (json, schedule) in cases {
            assert_eq!(serde_json::from_str::<Schedule>(json).unwrap(), schedule);
            assert_eq!(serde_json::to_string(&schedule).unwrap(), json);
        }
        assert_eq!(serde_json::from_str::<Schedule>(r#"{"kind":"daily","at":"01:00"}"#).unwrap(), daily("01:00", &[]));
    }

    #[test]
    fn manual_clock_moves_only_by_hand() {
        let clock = ManualClock::new(utc("2026-01-01T00:00:00Z"));
        clock.advance(SignedDuration::from_secs(90));
        assert_eq!(clock.now(), utc("2026-01-01T00:01:30Z"));
        clock.advance(SignedDuration::from_mins(-1));
        assert_eq!(clock.now(), utc("2026-01-01T00:00:30Z"));
        clock.set(utc("2027-05-05T05:05:05Z"));
        let dyn_clock: &dyn Clock = &clock;
        assert_eq!(dyn_clock.now(), utc("2027-05-05T05:05:05Z"));
        assert!(SystemClock.now() > utc("2020-01-01T00:00:00Z"));
    }
}
