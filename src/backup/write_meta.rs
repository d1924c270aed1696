//! Writing BR's `backupmeta` (`VolumeBackupSnapshotsCreated`), once every snapshot has started and PD
//! is resumed. It is written only where this backup holds the prefix lock, and never over another one.

use super::complete::SNAPSHOT_PROGRESS_STEP;
use super::meta::{self, MetaInputs};
use super::ownership::{PrefixOwner, prefix_owner};
use super::record::Failure;
use super::step::{BackupRun, Outcome, StepResult, transient};
use crate::api::ConditionType;
use crate::api::condition::{NewCondition, set_condition, set_progress};
use crate::api::tidbcluster::ClusterFacts;
use crate::k8s::volumes::resolve_volumes;
use crate::reason::Reason;

pub async fn run(cx: &mut BackupRun<'_>) -> StepResult {
    let plan = cx.journal.record.plan.clone().expect("plan recorded");
    let Some(tc) = cx.clients.tidbcluster(&plan.cluster_namespace, &plan.cluster).await? else {
        return Err(Failure::new(Reason::TidbClusterNotFound, "the TidbCluster disappeared during the backup").into());
    };
    let facts = ClusterFacts::from_object(&tc);
    // The snapshots exist and PD is resumed: a pod or claim seen mid-restart is waited out.
    let volumes = resolve_volumes(&cx.ctx.client, &plan.cluster_namespace, &plan.cluster, &facts).await.map_err(|e| transient(e.into()))?;
    let tc_json = serde_json::to_value(&tc).unwrap_or_default();
    let inputs = MetaInputs {
        pvs: &volumes.pvs,
        pvcs: &volumes.pvcs,
        tidbcluster: &tc_json,
        tikv_replicas: plan.stores.len(),
        pd_replicas: facts.pd_replicas,
        tidb_replicas: facts.tidb_replicas,
    };
    let backupmeta = meta::build_backupmeta(&cx.journal.record, &inputs).map_err(|message| Failure::new(Reason::BackupMetaInvalid, message))?;
    let aws = cx.clients.aws(&cx.journal.backup).await.map_err(transient)?;
    let location = aws.meta.location();
    match prefix_owner(&cx.journal.backup, &aws).await.map_err(|e| transient(Failure::doing("reading the prefix lock", &e)))? {
        PrefixOwner::Other(who) => {
            return Err(Failure::new(Reason::FileExistedInExternalStorage, format!("{location} was claimed by Backup {who} meanwhile")).into());
        }
        PrefixOwner::Us | PrefixOwner::Nobody => {}
    }
    let body = serde_json::to_vec(&backupmeta).expect("json");
    let written = aws
        .meta
        .put_if_absent(meta::META_FILE, body)
        .await
        .map_err(|e| transient(Failure::new(Reason::BackupMetaWriteFailed, format!("writing {location}/{}: {e}", meta::META_FILE))))?;
    if !written {
        // After a restart the object may be ours; anything else is someone else's backup.
        let existing = aws.meta.get(meta::META_FILE).await.ok().flatten().and_then(|b| serde_json::from_slice(&b).ok());
        let ours = existing.is_some_and(|m| meta::snapshot_ids_in_meta(&m) == meta::snapshot_ids_in_meta(&backupmeta));
        if !ours {
            let message = format!("{location}/{} was written by someone else meanwhile", meta::META_FILE);
            return Err(Failure::new(Reason::FileExistedInExternalStorage, message).into());
        }
    }
    crate::crash_point!("meta.after-put");
    let message = format!("{} snapshots started; backupmeta written", cx.journal.record.snapshots.len());
    cx.journal
        .save(|status, record, now| {
            record.meta_written = true;
            record.transient = None;
            status.commit_ts = record.resolved_ts.map(|ts| ts.to_string());
            set_condition(
                status,
                NewCondition::truthy(ConditionType::VolumeBackupSnapshotsCreated).because(Reason::SnapshotsCreated, message.clone()),
                now,
            );
            set_progress(status, SNAPSHOT_PROGRESS_STEP, 0.0, now);
        })
        .await?;
    crate::crash_point!("meta.after-save");
    Ok(Outcome::Continue)
}
