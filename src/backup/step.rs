//! What a step gets (`BackupRun`: the shared context, the journal, the clients) and what it returns
//! (`Outcome`, or a `StepError` the runner commits). Every step module depends on this one only.

use std::time::Duration;

use super::claim::ClusterClaim;
use super::clients::Clients;
use super::context::Context;
use super::error::{Error, Result};
use super::journal::Journal;
use super::record::Failure;

/// What the runner does after a step.
pub enum Outcome {
    Continue,
    Requeue(Duration),
    Stop,
}

/// Why a step stopped short.
pub enum StepError {
    /// The backup fails: recorded, then the failure step undoes what was done.
    Fail(Failure),
    /// A problem that may pass, ridden out for up to `Settings::transient_limit`, then a failure.
    Transient(Failure),
    /// The spec cannot be used: `Invalid`, nothing touched.
    Invalid(String),
    /// Kubernetes or the record could not be written: retried by the controller.
    Api(Error),
}

impl From<Failure> for StepError {
    fn from(failure: Failure) -> Self {
        Self::Fail(failure)
    }
}

impl From<Error> for StepError {
    fn from(error: Error) -> Self {
        Self::Api(error)
    }
}

impl From<kube::Error> for StepError {
    fn from(error: kube::Error) -> Self {
        Self::Api(error.into())
    }
}

pub type StepResult = std::result::Result<Outcome, StepError>;

/// A failure that is ridden out rather than failing the backup at once.
pub fn transient(failure: Failure) -> StepError {
    StepError::Transient(failure)
}

pub struct BackupRun<'a> {
    pub ctx: &'a Context,
    pub journal: Journal,
    pub clients: Clients<'a>,
    pub window: InWindow,
}

/// What this pass did inside the pause window that the next step may skip redoing. Kept in memory only:
/// after a restart or a hand-over the record alone decides, and the slower path that trusts nothing
/// unrecorded runs instead.
#[derive(Default)]
pub struct InWindow {
    /// The first round of CreateSnapshots calls, recorded with the resolved ts by this pass before any
    /// call went out: no earlier process can have calls of it in flight.
    pub recorded_round: Option<Vec<String>>,
    /// PD resumed by this pass while the snapshot ids were being recorded.
    pub resumed: Option<std::result::Result<(), super::resume::ResumeError>>,
}

impl<'a> BackupRun<'a> {
    pub fn new(ctx: &'a Context, backup: crate::api::Backup) -> Result<Self> {
        Ok(Self { ctx, journal: Journal::open(ctx, backup)?, clients: Clients::new(ctx), window: InWindow::default() })
    }

    /// The backup's claim on its TidbCluster (one backup at a time per cluster).
    pub fn claim(&self) -> ClusterClaim {
        let backup = &self.journal.backup;
        ClusterClaim::new(
            &self.ctx.client,
            &self.ctx.settings.claim_namespace,
            &backup.cluster_namespace(),
            &backup.spec.br.cluster,
            backup,
            self.ctx.settings.pause_ttl,
        )
    }

    /// Gives the cluster back; a failure only delays the next backup by one pause TTL.
    pub async fn release_claim(&self) {
        if let Err(e) = self.claim().release().await {
            tracing::warn!(error = %e, "releasing the cluster claim failed; the next backup waits one pause TTL");
        }
    }
}
