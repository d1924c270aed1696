//! The PD calls of a pause: applying it (again) and undoing it.

use futures::future::try_join_all;

use crate::backup::record::PauseRecord;
use crate::pd::{Pd, PdError, SafepointUpdate};

/// Re-applies the pause once: schedulers, config overrides and (when known) the GC safepoint, all at
/// once (they are independent; the pause is in force only when every call has returned).
pub async fn apply_pause(pd: &dyn Pd, pause: &PauseRecord) -> Result<Option<SafepointUpdate>, PdError> {
    let ttl = pause.ttl_seconds;
    let schedulers = try_join_all(pause.schedulers.iter().map(|scheduler| pd.pause_scheduler(scheduler, ttl)));
    let config = async { if pause.paused_config.is_empty() { Ok(()) } else { pd.set_config_with_ttl(&pause.paused_config, ttl).await } };
    let safepoint = async {
        match pause.safepoint {
            Some(safepoint) => pd.update_service_safepoint(&pause.service_safepoint_id, ttl as i64, safepoint).await.map(Some),
            None => Ok(None),
        }
    };
    let (_, (), update) = tokio::try_join!(schedulers, config, safepoint)?;
    Ok(update)
}

/// The parts of a pause PD could not be told to undo.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|(what, e)| format!("{what}: {e}")).collect::<Vec<_>>().join("; "))]
pub struct UndoFailed(pub Vec<(String, PdError)>);

/// Undoes the pause: schedulers resumed, config put back, our service safepoint removed. Every part is
/// tried even when one fails.
pub async fn undo_pause(pd: &dyn Pd, pause: &PauseRecord) -> Result<(), UndoFailed> {
    let mut errors = Vec::new();
    for scheduler in &pause.schedulers {
        // A scheduler removed meanwhile has nothing left to resume.
        if let Err(e) = pd.pause_scheduler(scheduler, 0).await
            && !e.is_scheduler_not_found()
        {
            errors.push((format!("resuming {scheduler}"), e));
        }
    }
    if !pause.original_config.is_empty()
        && let Err(e) = pd.set_config_with_ttl(&pause.original_config, 0).await
    {
        errors.push(("restoring schedule config".into(), e));
    }
    if let Err(e) = pd.update_service_safepoint(&pause.service_safepoint_id, 0, 0).await {
        errors.push(("removing the service GC safepoint".into(), e));
    }
    if errors.is_empty() { Ok(()) } else { Err(UndoFailed(errors)) }
}
