//! The volume-snapshot backup reconciler: a resumable state machine over what each Backup records.
//! `machine` picks the next step from the record; `run` runs it and commits what it returns; each step
//! is a module (`preflight`, `pause`, `snapshot`, `resume`, `write_meta`, `complete`, `failure`,
//! `cleanup`); `journal` is the one writer of the record, status and finalizer.

mod backoff;
pub mod claim;
pub mod cleanup;
mod clients;
pub mod clock;
mod complete;
pub mod context;
mod error;
pub mod events;
mod failure;
pub mod journal;
pub mod machine;
pub mod meta;
pub mod orphans;
pub mod ownership;
pub mod pause;
pub mod preflight;
pub mod prepare;
pub mod queue;
pub mod record;
mod resume;
pub mod run;
mod sizes;
mod snapshot;
pub mod step;
mod write_meta;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use crate::api::Backup;
pub use backoff::ErrorBackoff;
pub use complete::SNAPSHOT_PROGRESS_STEP;
pub use context::{Context, Settings};
pub use error::{Error, Result};
pub use run::SELECTOR_LABEL;

pub async fn reconcile(backup: Arc<Backup>, ctx: Arc<Context>) -> Result<Action> {
    let span = tracing::info_span!("backup", namespace = %backup.namespace().unwrap_or_default(), name = %backup.name_any());
    async move {
        // Judged on the spec the backup started with: an edit mid-flight does not make it someone else's.
        let run = step::BackupRun::new(&ctx, (*backup).clone())?;
        if !run.journal.backup.is_volume_snapshot() || run.journal.backup.spec.federal_volume_backup_phase.is_some() {
            return Ok(Action::await_change());
        }
        if !ctx.fence.held() {
            // Not (or no longer) sure to lead: touch nothing; the process exits if the Lease is lost.
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        if backup.meta().deletion_timestamp.is_some() {
            return Ok(cleanup::on_delete(run).await?.map_or_else(Action::await_change, Action::requeue));
        }
        let uid = run.journal.uid();
        let after = run.run().await?;
        ctx.error_backoff.succeeded(&uid);
        Ok(after.map_or_else(Action::await_change, Action::requeue))
    }
    .instrument(span)
    .await
}

pub fn error_policy(backup: Arc<Backup>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = %backup.namespace().unwrap_or_default(), name = %backup.name_any(), %error, "reconcile failed; retrying");
    ctx.metrics.reconcile_error(error.reason().as_str());
    match error {
        Error::Record(_) => Action::await_change(),
        _ => Action::requeue(ctx.error_backoff.failed(backup.meta().uid.as_deref().unwrap_or_default())),
    }
}

/// Runs the controller on the Backups matching `selector` (all when `None`) until `shutdown` resolves.
/// Shutting down drops everything in flight at once (every step is safe to cut short); `fence` says
/// whether this replica may act.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: kube::Client,
    settings: Settings,
    connectors: Arc<dyn context::Connectors>,
    metrics: Arc<crate::metrics::Metrics>,
    fence: Arc<crate::k8s::lease::Fence>,
    namespace: Option<String>,
    selector: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let backups: Api<Backup> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = selector.filter(|s| !s.is_empty()) {
        config = config.labels(&selector);
    }
    let controller = Controller::new(backups.clone(), config.clone());
    // One backup at a time per TidbCluster: when one ends (or goes), the next in line is reconciled at
    // once instead of at its next poll.
    let known = controller.store();
    let controller = controller.watches(backups, config, move |changed: Backup| queue::next_in_line(&known.state(), &changed));
    let ctx = Arc::new(Context::new(client.clone(), settings, connectors, controller.store(), metrics.clone(), fence));
    let orphan_scan = tokio::spawn(orphans::scan_forever(
        client.clone(),
        ctx.connectors.clone(),
        controller.store(),
        metrics.clone(),
        ctx.settings.orphan_scan_interval,
    ));
    let store = controller.store();
    let ready = metrics.clone();
    tokio::spawn(async move {
        // The store's readiness signal wakes only its latest waiter (the controller's own), so a second
        // waiter must poll again to see it.
        loop {
            match tokio::time::timeout(Duration::from_millis(500), store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    tracing::info!("Backup watch synced; ready");
                    ready.set_ready();
                    return;
                }
                Ok(Err(e)) => return tracing::warn!(error = %e, "Backup watch ended before it synced"),
                Err(_) => continue,
            }
        }
    });
    let controller = controller.run(reconcile, error_policy, ctx).for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "controller event");
        }
    });
    tokio::select! {
        _ = controller => {}
        _ = shutdown => tracing::info!("shutting down; in-flight work is dropped and resumes from its record"),
    }
    orphan_scan.abort();
}

#[cfg(test)]
#[path = "tests/mod.rs"]
mod step_tests;
