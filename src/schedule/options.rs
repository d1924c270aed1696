//! What a schedule asks for, read from its spec and from the annotations this operator adds (see
//! `api::backup_schedule` for why those are annotations). Anything unusable is one error message: the
//! schedule then creates and deletes nothing.

use jiff::SignedDuration;

use super::cron::{Cron, parse_go_duration};
use super::retention::{Policy, Tiers};
use crate::api::BackupSchedule;
use crate::api::backup_schedule::{FAILED_RETENTION_ANNOTATION, RETENTION_TIERS_ANNOTATION, STARTING_DEADLINE_ANNOTATION, TIME_ZONE_ANNOTATION};

/// Failed backups hold nothing restorable; a day leaves time to read why they failed.
pub const DEFAULT_FAILED_GRACE: SignedDuration = SignedDuration::from_hours(24);

pub struct Options {
    pub cron: Cron,
    pub starting_deadline: Option<SignedDuration>,
    pub policy: Policy,
}

pub fn read(schedule: &BackupSchedule) -> Result<Options, String> {
    let cron = Cron::parse(&schedule.spec.schedule, schedule.annotation(TIME_ZONE_ANNOTATION)).map_err(|e| e.to_string())?;
    let starting_deadline = match schedule.annotation(STARTING_DEADLINE_ANNOTATION).map(str::trim) {
        None | Some("") => None,
        Some(text) => match text.parse::<i64>() {
            Ok(seconds) if seconds > 0 => Some(SignedDuration::from_secs(seconds)),
            _ => return Err(format!("annotation {STARTING_DEADLINE_ANNOTATION}: {text:?} is not a positive number of seconds")),
        },
    };
    let max_backups = match schedule.spec.max_backups {
        Some(n) if n < 0 => return Err(format!("spec.maxBackups must not be negative ({n})")),
        other => other.map(|n| n as u32),
    };
    let max_reserved = match schedule.spec.max_reserved_time.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match parse_go_duration(text) {
            Ok(d) if d > SignedDuration::ZERO => Some(d),
            Ok(_) => return Err("spec.maxReservedTime must be longer than zero".into()),
            Err(e) => return Err(format!("spec.maxReservedTime: {e}")),
        },
    };
    let tiers = match schedule.annotation(RETENTION_TIERS_ANNOTATION) {
        None => Tiers::default(),
        Some(text) => Tiers::parse(text).map_err(|e| format!("annotation {RETENTION_TIERS_ANNOTATION}: {e}"))?,
    };
    let failed_grace = match schedule.annotation(FAILED_RETENTION_ANNOTATION).map(str::trim) {
        None | Some("") => DEFAULT_FAILED_GRACE,
        Some(text) => parse_go_duration(text).map_err(|e| format!("annotation {FAILED_RETENTION_ANNOTATION}: {e}"))?,
    };
    let zone = cron.zone().clone();
    Ok(Options { cron, starting_deadline, policy: Policy { max_backups, max_reserved, tiers, failed_grace, zone } })
}
