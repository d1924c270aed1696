//! Which of a schedule's backups retention removes: a pure function of the backups and the policy.
//!
//! As TiDB Operator documents `maxReservedTime` (preferred when both are set) and `maxBackups`, except
//! that only `Complete` backups are recovery points: a failed backup never pushes out a good one, and
//! is removed on its own once `failedGrace` has passed. Tiers (newest per hour, day, week, month)
//! keep more, never less. The newest `Complete` backup is always kept.

use std::collections::{BTreeSet, HashSet};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Complete,
    /// `Failed` or `Invalid`: nothing restorable.
    Failed,
    /// Not finished yet, or already being deleted: never chosen.
    Busy,
}

#[derive(Clone, Debug)]
pub struct BackupFacts {
    pub name: String,
    pub uid: String,
    pub created: Timestamp,
    /// The recovery point: the commit ts for a `Complete` backup, else the creation time.
    pub point: Timestamp,
    pub state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tiers(pub Vec<(Period, u32)>);

impl Tiers {
    /// `hourly=24,daily=7,weekly=4,monthly=12` (any subset, any order).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut tiers = Vec::new();
        let mut seen = BTreeSet::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, count) = part.split_once('=').ok_or_else(|| format!("{part:?} is not <period>=<count>"))?;
            let period = match name.trim() {
                "hourly" => Period::Hourly,
                "daily" => Period::Daily,
                "weekly" => Period::Weekly,
                "monthly" => Period::Monthly,
                other => return Err(format!("unknown period {other:?} (hourly, daily, weekly, monthly)")),
            };
            let count: u32 = count.trim().parse().map_err(|_| format!("{part:?}: the count must be a whole number"))?;
            if !seen.insert(period) {
                return Err(format!("{name} is given twice"));
            }
            tiers.push((period, count));
        }
        if tiers.is_empty() {
            return Err("no tier given (for example hourly=24,daily=7,weekly=4,monthly=12)".into());
        }
        Ok(Self(tiers))
    }
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub max_backups: Option<u32>,
    pub max_reserved: Option<SignedDuration>,
    pub tiers: Tiers,
    pub failed_grace: SignedDuration,
    /// Where hours, days, weeks and months begin.
    pub zone: TimeZone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Beyond `maxBackups` and no tier keeps it.
    Count,
    /// Older than `maxReservedTime` and no tier keeps it.
    Age,
    /// A failed backup past its grace period.
    Failed,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Count => "max-backups",
            Why::Age => "max-reserved-time",
            Why::Failed => "failed",
        }
    }
}

/// The backups to remove, oldest first.
pub fn expired<'a>(backups: &'a [BackupFacts], policy: &Policy, now: Timestamp) -> Vec<(&'a BackupFacts, Why)> {
    let mut complete: Vec<&BackupFacts> = backups.iter().filter(|b| b.state == State::Complete).collect();
    complete.sort_by(|a, b| b.point.cmp(&a.point).then_with(|| b.created.cmp(&a.created)));
    let mut keep: HashSet<&str> = HashSet::new();
    let mut why = Why::Count;
    let limited = policy.max_reserved.is_some() || policy.max_backups.is_some_and(|n| n > 0) || !policy.tiers.0.is_empty();
    if !limited {
        keep.extend(complete.iter().map(|b| b.name.as_str()));
    } else if let Some(reserved) = policy.max_reserved {
        why = Why::Age;
        let oldest_kept = now.checked_sub(reserved).unwrap_or(Timestamp::MIN);
        keep.extend(complete.iter().filter(|b| b.point >= oldest_kept).map(|b| b.name.as_str()));
    } else if let Some(count) = policy.max_backups.filter(|n| *n > 0) {
        keep.extend(complete.iter().take(count as usize).map(|b| b.name.as_str()));
    }
    for (period, count) in &policy.tiers.0 {
        let mut buckets = HashSet::new();
        for backup in &complete {
            if buckets.len() >= *count as usize {
                break;
            }
            if buckets.insert(bucket(*period, backup.point, &policy.zone)) {
                keep.insert(backup.name.as_str());
            }
        }
    }
    if let Some(newest) = complete.first() {
        keep.insert(newest.name.as_str());
    }
    let mut out: Vec<(&BackupFacts, Why)> = complete.iter().filter(|b| !keep.contains(b.name.as_str())).map(|b| (*b, why)).collect();
    let grace_ended = now.checked_sub(policy.failed_grace).unwrap_or(Timestamp::MIN);
    out.extend(backups.iter().filter(|b| b.state == State::Failed && b.created < grace_ended).map(|b| (b, Why::Failed)));
    out.sort_by_key(|(b, _)| (b.point, b.created));
    out
}

fn bucket(period: Period, point: Timestamp, zone: &TimeZone) -> (i16, i16, i8, i8) {
    let local = point.to_zoned(zone.clone());
    let date = local.date();
    match period {
        Period::Hourly => (date.year(), date.month() as i16, date.day(), local.hour()),
        Period::Daily => (date.year(), date.month() as i16, date.day(), 0),
        Period::Weekly => {
            let week = date.iso_week_date();
            (week.year(), week.week() as i16, 0, 0)
        }
        Period::Monthly => (date.year(), date.month() as i16, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn backup(name: &str, created: &str, state: State) -> BackupFacts {
        BackupFacts { name: name.into(), uid: format!("uid-{name}"), created: at(created), point: at(created), state }
    }

    fn policy() -> Policy {
        Policy { max_backups: None, max_reserved: None, tiers: Tiers::default(), failed_grace: SignedDuration::from_hours(24), zone: TimeZone::UTC }
    }

    fn names(out: Vec<(&BackupFacts, Why)>) -> Vec<(String, Why)> {
        out.into_iter().map(|(b, why)| (b.name.clone(), why)).collect()
    }

    /// One row: the backups (name, created, state), the policy, the time, and what must be removed.
    struct Row {
        what: &'static str,
        backups: Vec<BackupFacts>,
        policy: Policy,
        now: &'static str,
        removed: Vec<(&'static str, Why)>,
    }

    #[test]
    fn the_retention_table() {
        use State::*;
        let day = |d: u32, state: State| backup(&format!("d{d}"), &format!("2026-11-{d:02}T00:00:00Z"), state);
        let rows = vec![
            Row {
                what: "maxBackups counts only Complete backups: five failures push out nothing",
                backups: vec![day(1, Complete), day(2, Complete), day(3, Failed), day(4, Failed), day(5, Failed), day(6, Failed), day(7, Failed)],
                policy: Policy { max_backups: Some(2), failed_grace: SignedDuration::from_hours(24 * 365), ..policy() },
                now: "2026-11-08T00:00:00Z",
                removed: vec![],
            },
            Row {
                what: "maxBackups removes the oldest Complete beyond the count, failed ones after their grace",
                backups: vec![day(1, Complete), day(2, Complete), day(3, Complete), day(4, Failed), day(5, Complete), day(6, Busy)],
                policy: Policy { max_backups: Some(2), ..policy() },
                now: "2026-11-06T12:00:00Z",
                removed: vec![("d1", Why::Count), ("d2", Why::Count), ("d4", Why::Failed)],
            },
            Row {
                what: "maxReservedTime is preferred over maxBackups",
                backups: vec![day(1, Complete), day(2, Complete), day(3, Complete), day(4, Complete)],
                policy: Policy { max_backups: Some(1), max_reserved: Some(SignedDuration::from_hours(48)), ..policy() },
                now: "2026-11-05T00:00:00Z",
                removed: vec![("d1", Why::Age), ("d2", Why::Age)],
            },
            Row {
                what: "the newest Complete backup is kept even when it is too old",
                backups: vec![day(1, Complete), day(2, Complete), day(3, Failed)],
                policy: Policy { max_reserved: Some(SignedDuration::from_hours(1)), ..policy() },
                now: "2026-11-20T00:00:00Z",
                removed: vec![("d1", Why::Age), ("d3", Why::Failed)],
            },
            Row {
                what: "a failed backup within its grace is kept; running ones are never touched",
                backups: vec![day(1, Complete), day(2, Busy), day(3, Failed)],
                policy: Policy { max_backups: Some(1), ..policy() },
                now: "2026-11-03T12:00:00Z",
                removed: vec![],
            },
            Row {
                what: "no policy keeps every Complete backup",
                backups: vec![day(1, Complete), day(2, Complete), day(3, Complete)],
                policy: policy(),
                now: "2026-11-30T00:00:00Z",
                removed: vec![],
            },
        ];
        for row in rows {
            let expected: Vec<(String, Why)> = row.removed.iter().map(|(n, w)| (n.to_string(), *w)).collect();
            assert_eq!(names(expired(&row.backups, &row.policy, at(row.now))), expected, "{}", row.what);
        }
    }

    #[test]
    fn tiers_keep_the_newest_backup_of_each_period() {
        // Every 6 hours for 10 days.
        let mut backups = Vec::new();
        for i in 0..40 {
            let t = at("2026-11-01T00:00:00Z").checked_add(SignedDuration::from_hours(6 * i)).unwrap();
            backups.push(BackupFacts { name: format!("b{i:02}"), uid: format!("u{i}"), created: t, point: t, state: State::Complete });
        }
        let policy = Policy { max_backups: Some(2), tiers: Tiers::parse("daily=3,weekly=2").unwrap(), ..policy() };
        let removed: HashSet<String> = names(expired(&backups, &policy, at("2026-11-11T00:00:00Z"))).into_iter().map(|(n, _)| n).collect();
        let kept: BTreeSet<String> = backups.iter().map(|b| b.name.clone()).filter(|n| !removed.contains(n)).collect();
        // maxBackups: b39, b38; daily: newest of Nov 10 (b39), Nov 9 (b35), Nov 8 (b31);
        // weekly (ISO): week of Nov 9-15 (b39), week of Nov 2-8 (b31).
        let expected: BTreeSet<String> = ["b31", "b35", "b38", "b39"].iter().map(|s| s.to_string()).collect();
        assert_eq!(kept, expected);
    }

    #[test]
    fn tiers_are_read_from_their_annotation() {
        assert_eq!(Tiers::parse("hourly=24, daily=7").unwrap(), Tiers(vec![(Period::Hourly, 24), (Period::Daily, 7)]));
        assert!(Tiers::parse("yearly=1").is_err());
        assert!(Tiers::parse("daily=x").is_err());
        assert!(Tiers::parse("daily=1,daily=2").is_err());
        assert!(Tiers::parse("").is_err());
    }
}
