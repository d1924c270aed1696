//! The Backup as this operator acts on it, and the one place its record, status, finalizer and phase
//! Events are written. Every write is a guarded update of what the API server holds (see `StatusWriter`).

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;

use super::clock::now_time;
use super::context::Context;
use super::error::Result;
use super::events::Publisher;
use super::record::{BackupRecord, Failure, RECORD_ANNOTATION};
use crate::api::condition::{NewCondition, set_condition};
use crate::api::{BACKUP_PROTECTION_FINALIZER, Backup, BackupStatus, ConditionType};
use crate::k8s::StatusWriter;
use crate::metrics::Metrics;

pub struct Journal {
    api: Api<Backup>,
    writer: Arc<StatusWriter>,
    metrics: Arc<Metrics>,
    pub events: Publisher,
    /// With the spec the backup started with (see `BackupRecord::spec`).
    pub backup: Backup,
    pub record: BackupRecord,
    /// A phase Event that waits for the next write (see `save_deferring_event`).
    deferred_event: Option<PhaseEvent>,
}

/// The spec recorded when the backup started replaces the live one, except `cleanPolicy` and `cleanOption`.
fn pin_spec(backup: &mut Backup, record: &BackupRecord) {
    if let Some(pinned) = &record.spec {
        let (clean_policy, clean_option) = (backup.spec.clean_policy, backup.spec.clean_option.take());
        backup.spec = pinned.clone();
        backup.spec.clean_policy = clean_policy;
        backup.spec.clean_option = clean_option;
    }
}

impl Journal {
    pub fn open(ctx: &Context, mut backup: Backup) -> Result<Self> {
        let api = Api::namespaced(ctx.client.clone(), backup.metadata.namespace.as_deref().unwrap_or_default());
        let record = BackupRecord::of(&backup).map_err(super::error::Error::Record)?;
        if let Some(pinned) = &record.spec
            && (pinned.s3 != backup.spec.s3 || pinned.backup_mode != backup.spec.backup_mode || pinned.br != backup.spec.br)
        {
            tracing::warn!("the spec changed after the backup started; the backup goes on with the spec it started with");
        }
        pin_spec(&mut backup, &record);
        let events = Publisher::new(ctx.recorder.clone(), &backup);
        Ok(Self { api, writer: ctx.writer.clone(), metrics: ctx.metrics.clone(), events, backup, record, deferred_event: None })
    }

    pub fn api(&self) -> &Api<Backup> {
        &self.api
    }

    pub fn uid(&self) -> String {
        self.backup.metadata.uid.clone().unwrap_or_default()
    }

    pub fn name(&self) -> String {
        self.backup.name_any()
    }

    fn adopt_stored(&mut self, mut stored: Backup, record: BackupRecord) {
        pin_spec(&mut stored, &record);
        self.backup = stored;
        self.record = record;
    }

    /// Writes status and the record together; publishes an Event when the phase changes. `change` is
    /// applied to the record as stored (a conflict retry runs it again on the newer one).
    pub async fn save(&mut self, change: impl FnMut(&mut BackupStatus, &mut BackupRecord, &Time)) -> Result<()> {
        self.write(change, false).await
    }

    /// As `save`, but a phase change's Event is published with the next write instead of now: inside the
    /// pause window nothing waits on a Kubernetes call that crash safety does not need.
    pub async fn save_deferring_event(&mut self, change: impl FnMut(&mut BackupStatus, &mut BackupRecord, &Time)) -> Result<()> {
        self.write(change, true).await
    }

    async fn write(&mut self, mut change: impl FnMut(&mut BackupStatus, &mut BackupRecord, &Time), defer_event: bool) -> Result<()> {
        let now = now_time();
        let before = self.backup.phase().cloned();
        let base_record = self.record.clone();
        let mut applied = base_record.clone();
        let stored = self
            .writer
            .update(&self.api, &self.backup, |owned| {
                let mut record = owned
                    .annotations
                    .get(RECORD_ANNOTATION)
                    .and_then(|value| BackupRecord::from_annotation(value).ok())
                    .unwrap_or_else(|| base_record.clone());
                change(&mut owned.status, &mut record, &now);
                owned.annotations.insert(RECORD_ANNOTATION.into(), record.to_annotation());
                applied = record;
            })
            .await?;
        self.adopt_stored(stored, applied);
        if let Some(event) = self.deferred_event.take() {
            event.publish(&self.events).await;
        }
        let after = self.backup.phase().cloned();
        if after != before
            && let Some(phase) = after
        {
            self.metrics.phase_entered(&phase);
            let event = self.phase_event(&phase);
            if defer_event {
                self.deferred_event = Some(event);
            } else {
                event.publish(&self.events).await;
            }
        }
        Ok(())
    }

    fn phase_event(&self, phase: &ConditionType) -> PhaseEvent {
        let status = self.backup.status.clone().unwrap_or_default();
        let condition = status.conditions.iter().find(|c| &c.type_ == phase);
        PhaseEvent {
            warning: matches!(phase, ConditionType::Failed | ConditionType::Invalid | ConditionType::CleanFailed),
            reason: condition.and_then(|c| c.reason.clone()).unwrap_or_else(|| format!("{phase:?}")),
            note: condition.and_then(|c| c.message.clone()).unwrap_or_else(|| format!("Backup is {phase:?}")),
            action: format!("{phase:?}"),
        }
    }

    pub async fn condition(&mut self, condition: NewCondition) -> Result<()> {
        let mut condition = Some(condition);
        self.save(|status, _, now| {
            if let Some(c) = condition.take() {
                set_condition(status, c, now);
            }
        })
        .await
    }

    /// Records a failure decided now; the failure step undoes what was done and marks the backup `Failed`.
    pub async fn record_failure(&mut self, failure: Failure) -> Result<()> {
        tracing::warn!(reason = %failure.reason, message = %failure.message, "backup failed");
        let mut failure = Some(failure);
        self.save(|_, record, _| {
            if record.failure.is_none() {
                record.failure = failure.take();
            }
        })
        .await
    }

    pub fn has_finalizer(&self) -> bool {
        self.backup.metadata.finalizers.iter().flatten().any(|f| f == BACKUP_PROTECTION_FINALIZER)
    }

    pub async fn set_finalizer(&mut self, present: bool) -> Result<()> {
        let stored = self
            .writer
            .update(&self.api, &self.backup, |owned| {
                owned.finalizers.retain(|f| f != BACKUP_PROTECTION_FINALIZER);
                if present {
                    owned.finalizers.push(BACKUP_PROTECTION_FINALIZER.to_string());
                }
            })
            .await?;
        let record = self.record.clone();
        self.adopt_stored(stored, record);
        Ok(())
    }
}

/// The Event of a phase entered, as it read when the phase was written.
struct PhaseEvent {
    warning: bool,
    reason: String,
    note: String,
    action: String,
}

impl PhaseEvent {
    async fn publish(self, events: &Publisher) {
        events.publish_raw(self.warning, &self.reason, &self.note, &self.action).await;
    }
}
