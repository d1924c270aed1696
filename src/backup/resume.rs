//! Resuming PD: the keeper stopped, schedulers and config put back, the service safepoint removed. The
//! one place a pause is undone for a backup, whether it succeeded, failed or was deleted.

use std::time::Duration;

use super::clock::unix_now;
use super::context::Context;
use super::record::PauseRecord;
use super::step::{BackupRun, Outcome, StepResult};
use crate::pd::Pd;
use crate::reason::Reason;

/// Undoes the pause, if any. Quick retries first: a PD blip must not leave the pause to its TTL.
pub async fn resume_pd(cx: &mut BackupRun<'_>) -> Result<(), ResumeError> {
    let Some(pause) = cx.journal.record.pause.clone() else { return Ok(()) };
    let uid = cx.journal.uid();
    let pd = match cx.clients.plan_pd(cx.journal.record.plan.as_ref()).await {
        Ok(pd) => pd,
        Err(f) => {
            cx.ctx.keepers.stop(&uid);
            cx.ctx.prepared.finish(&uid).await;
            return Err(ResumeError::new(&pause, f.message));
        }
    };
    resume_with(cx.ctx, pd.as_ref(), &uid, &pause).await
}

/// Stops the keeper, finishes TiKV's prepare and puts PD back as it was, with a PD client at hand.
/// The two are independent, so they go together.
pub async fn resume_with(ctx: &Context, pd: &dyn Pd, uid: &str, pause: &PauseRecord) -> Result<(), ResumeError> {
    ctx.keepers.stop(uid);
    let undo = async {
        let mut last = Ok(());
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            last = super::pause::apply::undo_pause(pd, pause).await;
            if last.is_ok() {
                break;
            }
        }
        last.map_err(|e| ResumeError::new(pause, e.to_string()))
    };
    let ((), undone) = tokio::join!(ctx.prepared.finish(uid), undo);
    undone
}

/// Undoes the pause and records it; a PD that cannot be told is the inner error (the pause then lapses
/// by its TTL), a record that cannot be written the outer one.
pub async fn resume_and_record(cx: &mut BackupRun<'_>) -> super::error::Result<Result<(), ResumeError>> {
    if let Err(e) = resume_pd(cx).await {
        return Ok(Err(e));
    }
    cx.journal.save(|_, record, _| record.resumed = true).await?;
    Ok(Ok(()))
}

/// PD could not be told to resume.
#[derive(Debug, thiserror::Error)]
#[error("PD could not be told to resume; it drops the pause by itself within {ttl_seconds}s: {message}")]
pub struct ResumeError {
    pub ttl_seconds: u64,
    pub message: String,
}

impl ResumeError {
    fn new(pause: &PauseRecord, message: String) -> Self {
        Self { ttl_seconds: pause.ttl_seconds, message }
    }
}

/// The resume step, after every snapshot has started (PD may already be resumed by the snapshot step).
pub async fn run(cx: &mut BackupRun<'_>) -> StepResult {
    let resumed = match cx.window.resumed.take() {
        Some(resumed) => resumed,
        None => resume_pd(cx).await,
    };
    tracing::info!(ok = resumed.is_ok(), "PD resumed");
    crate::crash_point!("resume.after-undo");
    let elapsed = cx.journal.record.pause.as_ref().map_or(0, |p| unix_now() - p.paused_at);
    cx.ctx.metrics.pause_window(elapsed as f64);
    if let Err(e) = resumed {
        // The snapshots are consistent and PD drops the pause by its TTL: that is no reason to throw
        // them away (BR carries on too). Said loudly instead.
        let note = format!("the snapshots are consistent; {e}");
        tracing::warn!(%note);
        cx.journal.events.warning(Reason::PDResumeFailed, &note, "Resume").await;
    }
    cx.journal.save(|_, record, _| record.resumed = true).await?;
    crate::crash_point!("resume.after-save");
    Ok(Outcome::Continue)
}
