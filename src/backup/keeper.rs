//! Keeps a pause alive: PD forgets a scheduler pause on a leader change and drops config overrides and
//! safepoints after their TTL, so while a backup is paused we re-apply all three every third of the TTL.
//! If the operator dies, nothing refreshes them and PD resumes by itself within one TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::Api;
use tokio::task::JoinHandle;

use super::record::{BackupRecord, PauseRecord, RECORD_ANNOTATION};
use crate::api::Backup;
use crate::k8s::StatusWriter;
use crate::pd::{Pd, PdError};

#[derive(Default)]
pub struct Keepers {
    running: Mutex<HashMap<String, JoinHandle<()>>>,
}

/// Re-applies the pause once: schedulers, config overrides and (when known) the GC safepoint.
pub async fn apply_pause(pd: &dyn Pd, pause: &PauseRecord) -> Result<(), PdError> {
    let ttl = pause.ttl_seconds;
    for scheduler in &pause.schedulers {
        pd.pause_scheduler(scheduler, ttl).await?;
    }
    if !pause.paused_config.is_empty() {
        pd.set_config_with_ttl(&pause.paused_config, ttl).await?;
    }
    if let Some(safepoint) = pause.safepoint {
        pd.update_service_safepoint(&pause.service_safepoint_id, ttl as i64, safepoint).await?;
    }
    Ok(())
}

impl Drop for Keepers {
    /// An operator that goes away stops refreshing: PD then resumes by itself within one TTL.
    fn drop(&mut self) {
        for (_, handle) in self.running.lock().expect("keepers").drain() {
            handle.abort();
        }
    }
}

impl Keepers {
    pub fn is_running(&self, uid: &str) -> bool {
        self.running.lock().expect("keepers").get(uid).is_some_and(|h| !h.is_finished())
    }

    pub fn start(
        &self,
        uid: &str,
        pd: Arc<dyn Pd>,
        api: Api<Backup>,
        name: String,
        writer: Arc<StatusWriter>,
        pause: PauseRecord,
    ) {
        let mut running = self.running.lock().expect("keepers");
        if running.get(uid).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let interval = Duration::from_secs((pause.ttl_seconds / 3).max(1));
        let handle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                match apply_pause(pd.as_ref(), &pause).await {
                    Ok(()) => {
                        if let Ok(backup) = api.get(&name).await {
                            let now = jiff::Timestamp::now().as_second();
                            let _ = writer
                                .update(&api, &backup, |owned| {
                                    let Some(json) = owned.annotations.get(RECORD_ANNOTATION) else { return };
                                    let Ok(mut record) = serde_json::from_str::<BackupRecord>(json) else { return };
                                    if let Some(p) = record.pause.as_mut().filter(|_| !record.resumed) {
                                        p.refreshed_at = now;
                                        owned.annotations.insert(RECORD_ANNOTATION.into(), record.to_annotation());
                                    }
                                })
                                .await;
                        }
                    }
                    Err(e) => tracing::warn!(backup = %name, error = %e, "refreshing the PD pause failed; retrying at the next interval"),
                }
            }
        });
        running.insert(uid.to_string(), handle);
    }

    pub fn stop(&self, uid: &str) {
        if let Some(handle) = self.running.lock().expect("keepers").remove(uid) {
            handle.abort();
        }
    }
}
