//! TiKV's prepare for the snapshots, for the pause step (and the snapshot step after a restart): the
//! plan's stores are prepared (see `crate::tikv::prepare`) and held in [`Sessions`] until the pause is
//! undone, whichever path undoes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::record::{Failure, PrepareRecord};
use super::step::BackupRun;
use crate::pd::{Pd, Store};
use crate::reason::{Reason, Reasoned};
use crate::tikv::prepare::{Prepared, StoreAddress, prepare};
use crate::tikv::{TikvError, prepare_required};

#[derive(Default)]
pub struct Sessions {
    held: Mutex<HashMap<String, Prepared>>,
}

impl Sessions {
    pub fn hold(&self, uid: &str, prepared: Prepared) {
        self.held.lock().expect("prepared").insert(uid.to_string(), prepared);
    }

    /// `None` when this process holds no prepare for the backup.
    pub fn check(&self, uid: &str) -> Option<Result<(), String>> {
        self.held.lock().expect("prepared").get(uid).map(Prepared::check)
    }

    /// Finishes the backup's prepare, if this process holds one (else any lease lapses on its own).
    pub async fn finish(&self, uid: &str) {
        let prepared = self.held.lock().expect("prepared").remove(uid);
        if let Some(prepared) = prepared {
            prepared.finish().await;
        }
    }
}

pub enum Outcome {
    Prepared(Prepared, PrepareRecord),
    /// The stores do not serve it and need not: PD's pause only.
    Unsupported(PrepareRecord),
}

/// Prepares the plan's stores (from `stores`, PD's list), within `limit`.
pub async fn prepare_plan_stores(cx: &mut BackupRun<'_>, pd: &Arc<dyn Pd>, stores: &[Store], limit: Duration) -> Result<Outcome, Failure> {
    let plan = cx.journal.record.plan.as_ref().ok_or_else(|| Failure::new(Reason::RecordLost, "no snapshot plan recorded"))?;
    let ids: Vec<u64> = plan.stores.iter().map(|s| s.store_id).collect();
    let ours: Vec<&Store> = stores.iter().filter(|s| ids.contains(&s.id)).collect();
    let addresses: Vec<StoreAddress> = ours.iter().map(|s| StoreAddress { id: s.id, address: s.address.clone() }).collect();
    let required = ours.iter().all(|s| prepare_required(&s.version));
    let tikv = cx.clients.plan_tikv(cx.journal.record.plan.as_ref()).await?;
    let lease = cx.ctx.settings.pause_ttl.max(Duration::from_secs(3));
    match prepare(tikv.as_ref(), pd.as_ref(), &addresses, lease, limit).await {
        Ok(prepared) => {
            let record = PrepareRecord {
                stores: addresses.len(),
                regions: prepared.regions,
                wait_apply_ms: prepared.wait_apply.as_millis() as u64,
                unsupported: None,
            };
            cx.ctx.metrics.tikv_wait_apply(prepared.wait_apply.as_secs_f64());
            Ok(Outcome::Prepared(prepared, record))
        }
        Err(TikvError::Unsupported { store, message }) if !required => {
            let versions: Vec<String> = ours.iter().map(|s| format!("{} v{}", s.id, s.version.trim_start_matches('v'))).collect();
            let why = format!("TiKV store {store} does not serve PrepareSnapshotBackup ({message}); stores {}", versions.join(", "));
            Ok(Outcome::Unsupported(PrepareRecord { stores: addresses.len(), regions: 0, wait_apply_ms: 0, unsupported: Some(why) }))
        }
        Err(e @ TikvError::Unsupported { .. }) => Err(Failure::new(Reason::TiKVPrepareFailed, format!("{e}, which TiKV v7.6 and later must"))),
        Err(e) => Err(Failure::new(e.reason(), e.to_string())),
    }
}
