//! A schedule's times, read as TiDB Operator reads `spec.schedule` (robfig/cron `ParseStandard`: five
//! fields, the `@hourly`-style descriptors, `@every <duration>`), in the schedule's time zone.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CronError {
    #[error("spec.schedule {0:?} is not a cron expression: {1}")]
    Expression(String, String),
    #[error("time zone {0:?} is not known: {1}")]
    TimeZone(String, String),
}

#[derive(Clone, Debug)]
pub struct Cron {
    kind: Kind,
    zone: TimeZone,
}

#[derive(Clone, Debug)]
enum Kind {
    Pattern(Box<croner::Cron>),
    /// `@every d`: d after the previous run (robfig rounds d down to whole seconds).
    Every(SignedDuration),
}

impl Cron {
    /// `zone`: an IANA name (`Asia/Shanghai`), UTC when `None`.
    pub fn parse(expression: &str, zone: Option<&str>) -> Result<Self, CronError> {
        let zone = match zone.map(str::trim).filter(|z| !z.is_empty()) {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|e| CronError::TimeZone(name.to_string(), e.to_string()))?,
        };
        let bad = |why: String| CronError::Expression(expression.to_string(), why);
        let trimmed = expression.trim();
        let kind = if let Some(every) = trimmed.strip_prefix("@every") {
            let duration = parse_go_duration(every.trim()).map_err(bad)?;
            let duration = SignedDuration::from_secs(duration.as_secs());
            if duration < SignedDuration::from_secs(1) {
                return Err(bad("@every needs at least one second".into()));
            }
            Kind::Every(duration)
        } else {
            let pattern = if trimmed.eq_ignore_ascii_case("@midnight") { "@daily" } else { trimmed };
            if !pattern.starts_with('@') && pattern.split_whitespace().count() != 5 {
                return Err(bad("expected five fields (minute hour day-of-month month day-of-week)".into()));
            }
            let parser =
                croner::parser::CronParser::builder().seconds(croner::parser::Seconds::Disallowed).year(croner::parser::Year::Disallowed).build();
            Kind::Pattern(Box::new(parser.parse(pattern).map_err(|e| bad(e.to_string()))?))
        };
        Ok(Self { kind, zone })
    }

    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    /// The first scheduled time strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(every) => after.checked_add(*every).ok().map(|t| t.round(jiff::Unit::Second).unwrap_or(t)),
            Kind::Pattern(cron) => {
                let zoned = Zoned::new(after, self.zone.clone());
                cron.find_next_occurrence(&zoned, false).ok().map(|z| z.timestamp())
            }
        }
    }

    /// The newest scheduled time after `anchor` that is not after `now` (`None` when none has come yet).
    pub fn latest_due(&self, anchor: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let first = self.next_after(anchor)?;
        if first > now {
            return None;
        }
        match &self.kind {
            Kind::Every(every) => {
                let periods = now.duration_since(first).as_secs() / every.as_secs().max(1);
                first.checked_add(*every * periods as i32).ok()
            }
            Kind::Pattern(cron) => {
                let zoned = Zoned::new(now, self.zone.clone());
                let latest = cron.find_previous_occurrence(&zoned, true).ok()?.timestamp();
                Some(latest.max(first))
            }
        }
    }

    /// The typical gap between two runs (for the RPO alert): the gap after `from`.
    pub fn interval(&self, from: Timestamp) -> Option<SignedDuration> {
        let first = self.next_after(from)?;
        let second = self.next_after(first)?;
        Some(second.duration_since(first))
    }
}

/// A Go `time.ParseDuration` string without a sign: `72h`, `1h30m`, `1.5h`, `90s`.
pub fn parse_go_duration(text: &str) -> Result<SignedDuration, String> {
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text == "0" {
        return Ok(SignedDuration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 72h or 1h30m"))?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("{text:?} is not a duration such as 72h or 1h30m (unit {unit:?})")),
        };
        total += value * seconds;
        rest = next;
    }
    SignedDuration::try_from_secs_f64(total).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn five_fields_and_descriptors_run_in_utc_by_default() {
        let cron = Cron::parse("*/15 * * * *", None).unwrap();
        assert_eq!(cron.next_after(at("2026-12-02T10:07:00Z")), Some(at("2026-12-02T10:15:00Z")));
        assert_eq!(cron.next_after(at("2026-12-02T10:15:00Z")), Some(at("2026-12-02T10:30:00Z")), "strictly after");
        let daily = Cron::parse("@daily", None).unwrap();
        assert_eq!(daily.next_after(at("2026-12-02T10:07:00Z")), Some(at("2026-12-03T00:00:00Z")));
        assert_eq!(Cron::parse("@midnight", None).unwrap().next_after(at("2026-12-02T10:07:00Z")), Some(at("2026-12-03T00:00:00Z")));
        assert_eq!(daily.interval(at("2026-12-02T10:07:00Z")), Some(SignedDuration::from_hours(24)));
    }

    #[test]
    fn the_latest_due_time_skips_everything_missed_before_it() {
        let cron = Cron::parse("0 * * * *", None).unwrap();
        assert_eq!(cron.latest_due(at("2026-12-02T10:00:00Z"), at("2026-12-02T10:59:00Z")), None);
        assert_eq!(cron.latest_due(at("2026-12-02T10:00:00Z"), at("2026-12-02T15:20:00Z")), Some(at("2026-12-02T15:00:00Z")));
        assert_eq!(cron.latest_due(at("2026-12-02T10:00:00Z"), at("2026-12-02T11:00:00Z")), Some(at("2026-12-02T11:00:00Z")));
        let every = Cron::parse("@every 10s", None).unwrap();
        assert_eq!(every.latest_due(at("2026-12-02T10:00:00Z"), at("2026-12-02T10:00:35Z")), Some(at("2026-12-02T10:00:30Z")));
    }

    #[test]
    fn a_time_zone_moves_the_runs() {
        let cron = Cron::parse("0 2 * * *", Some("Asia/Shanghai")).unwrap();
        assert_eq!(cron.next_after(at("2026-12-02T10:00:00Z")), Some(at("2026-12-02T18:00:00Z")));
        assert!(matches!(Cron::parse("0 2 * * *", Some("Mars/Olympus")), Err(CronError::TimeZone(..))));
    }

    #[test]
    fn every_counts_from_the_previous_run() {
        let cron = Cron::parse("@every 1h30m", None).unwrap();
        assert_eq!(cron.next_after(at("2026-12-02T10:00:00Z")), Some(at("2026-12-02T11:30:00Z")));
        assert!(Cron::parse("@every 10ms", None).is_err());
        assert!(Cron::parse("@every soon", None).is_err());
    }

    #[test]
    fn what_robfig_refuses_is_refused() {
        for bad in ["", "* * * *", "0 0 0 * * *", "61 * * * *", "@fortnightly", "* * * * * 2026"] {
            assert!(Cron::parse(bad, None).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("72h").unwrap(), SignedDuration::from_hours(72));
        assert_eq!(parse_go_duration("1h30m").unwrap(), SignedDuration::from_mins(90));
        assert_eq!(parse_go_duration("1.5h").unwrap(), SignedDuration::from_mins(90));
        assert!(parse_go_duration("3d").is_err());
        assert!(parse_go_duration("h").is_err());
    }
}
