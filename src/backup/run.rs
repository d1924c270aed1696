//! One pass over a Backup: the steps `machine::next_step` picks, run until one has to wait. A step
//! returns what should happen next; this runner commits it (failures, transient problems, `Invalid`).

use std::time::Duration;

use super::clock::unix_now;
use super::error::Result;
use super::machine::{Step, next_step};
use super::record::{Failure, Transient};
use super::step::{BackupRun, Outcome, StepError};
use super::{cleanup, complete, failure, machine, pause, preflight, resume, snapshot, write_meta};
use crate::api::ConditionType;
use crate::api::condition::NewCondition;
use crate::reason::Reason;

/// The label that keeps TiDB Operator (through its controllerManager.selector) away from our Backups.
pub const SELECTOR_LABEL: &str = "tidb-ebs-backup.io/managed";

impl BackupRun<'_> {
    /// Runs steps until one has to wait or the backup is finished.
    pub async fn run(mut self) -> Result<Option<Duration>> {
        // The finalizer follows cleanPolicy on every pass: a Retain backup switched to Delete gets it.
        let journal = &mut self.journal;
        if cleanup::needs_finalizer(&journal.backup)
            && !journal.has_finalizer()
            && !matches!(next_step(&journal.backup, &journal.record), Step::Ignore)
        {
            journal.set_finalizer(true).await?;
        }
        loop {
            let step = next_step(&self.journal.backup, &self.journal.record);
            tracing::debug!(?step, "next step");
            let result = match step {
                Step::Ignore => return Ok(None),
                Step::Done => {
                    self.report_interference().await?;
                    return Ok(None);
                }
                Step::Schedule => preflight::schedule(&mut self).await,
                Step::Preflight => preflight::run(&mut self).await,
                Step::Pause => pause::take::run(&mut self).await,
                Step::Snapshot => snapshot::run(&mut self).await,
                Step::Resume => resume::run(&mut self).await,
                Step::WriteMeta => write_meta::run(&mut self).await,
                Step::WaitSnapshots => complete::wait_snapshots(&mut self).await,
                Step::Finish => complete::finish(&mut self).await,
                Step::HandleFailure(f) => failure::run(&mut self, f).await,
            };
            match result {
                Ok(Outcome::Continue) => continue,
                Ok(Outcome::Requeue(after)) => return Ok(Some(after)),
                Ok(Outcome::Stop) => return Ok(None),
                Err(StepError::Fail(f)) => self.journal.record_failure(f).await?,
                Err(StepError::Transient(f)) => {
                    if let Some(after) = self.ride_out(f).await? {
                        return Ok(Some(after));
                    }
                }
                Err(StepError::Invalid(message)) => {
                    self.journal.condition(NewCondition::truthy(ConditionType::Invalid).because(Reason::InvalidSpec, message)).await?;
                    return Ok(None);
                }
                Err(StepError::Api(e)) => return Err(e),
            }
        }
    }

    /// Rides out a transient problem for up to `Settings::transient_limit` (across requeues and restarts):
    /// the time to look again, or `None` once the problem has lasted too long and is recorded as a failure.
    async fn ride_out(&mut self, failure: Failure) -> Result<Option<Duration>> {
        let now = unix_now();
        let since = self.journal.record.transient.as_ref().map_or(now, |t| t.since);
        let limit = self.ctx.settings.transient_limit.as_secs() as i64;
        if now - since > limit {
            let message = format!("{} (for {}s, longer than the {limit}s the operator rides out)", failure.message, now - since);
            self.journal.record_failure(Failure { message, ..failure }).await?;
            return Ok(None);
        }
        tracing::warn!(reason = %failure.reason, message = %failure.message, "transient problem; retrying");
        let transient = Transient { since, reason: failure.reason, message: failure.message };
        self.journal.save(|_, record, _| record.transient = Some(transient.clone())).await?;
        Ok(Some(self.ctx.settings.poll_interval.max(Duration::from_secs(2))))
    }

    /// A Backup TiDB Operator marked Invalid is one we will never run: say why and how to fix it, once.
    async fn report_interference(&mut self) -> Result<()> {
        let Some(message) = machine::claimed_by_tidb_operator(&self.journal.backup) else { return Ok(()) };
        if self.journal.record.interference_reported {
            return Ok(());
        }
        let note = format!(
            "TiDB Operator marked this Backup Invalid ({message}), so tidb-ebs-backup will not run it. Keep TiDB Operator \
             away from volume-snapshot Backups: install it with controllerManager.selector [\"{SELECTOR_LABEL}!=true\"], \
             create these Backups with label {SELECTOR_LABEL}=true, and run tidb-ebs-backup with --backup-selector {SELECTOR_LABEL}=true; then re-create this Backup"
        );
        self.journal.events.warning(Reason::TiDBOperatorInterference, &note, "Skip").await;
        tracing::warn!(%note, "Backup claimed by TiDB Operator");
        self.journal.save(|_, record, _| record.interference_reported = true).await
    }
}
