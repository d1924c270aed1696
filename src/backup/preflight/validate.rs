//! The checks of preflight, on what `dereference` read: pure, so every rule has a table test.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::tidbcluster::ClusterFacts;
use crate::aws::VolumeInfo;
use crate::backup::record::{Failure, InstancePlan, SnapshotPlan};
use crate::k8s::volumes::ResolvedVolumes;
use crate::pd::version::version_at_least;
use crate::pd::{MinResolvedTs, Store};
use crate::reason::Reason;

/// The first TiDB version with EBS snapshot backup.
const MIN_CLUSTER_VERSION: (u64, u64) = (6, 3);

/// Everything preflight reads about a cluster before it decides.
#[derive(Clone, Debug)]
pub struct ClusterView {
    pub namespace: String,
    pub cluster: String,
    pub pd_url: String,
    pub version: String,
    pub stores: Vec<Store>,
    pub min_resolved_ts: MinResolvedTs,
    pub volumes: ResolvedVolumes,
    /// `s3://bucket/prefix`.
    pub location: String,
    /// Why the bucket cannot be used, if it cannot.
    pub bucket_error: Option<String>,
    pub meta_exists: bool,
    /// The EC2 view of the TiKV and PD volumes.
    pub described: Vec<VolumeInfo>,
    /// Instance id -> every volume attached to it.
    pub attached: BTreeMap<String, Vec<String>>,
    /// This account's snapshots pending in the Region now.
    pub pending_snapshots: usize,
}

impl ClusterView {
    /// The instances the TiKV volumes are attached to (those whose attachments are to be read).
    pub fn tikv_instances(&self) -> BTreeSet<String> {
        let tikv: BTreeSet<&str> = self.volumes.tikv.iter().flat_map(|s| s.volumes.iter().map(|v| v.volume_id.as_str())).collect();
        self.described.iter().filter(|v| tikv.contains(v.volume_id.as_str())).filter_map(|v| v.instance_id.clone()).collect()
    }
}

/// What can be told from the TidbCluster object alone.
pub fn tidbcluster(namespace: &str, cluster: &str, facts: Option<&ClusterFacts>) -> Result<(), Failure> {
    let Some(facts) = facts else {
        return Err(Failure::new(Reason::TidbClusterNotFound, format!("TidbCluster {namespace}/{cluster} (spec.br.cluster) does not exist")));
    };
    if facts.tiflash_replicas > 0 {
        let message = format!("TidbCluster {namespace}/{cluster} has TiFlash; EBS snapshot backups do not capture TiFlash volumes");
        return Err(Failure::new(Reason::TiFlashNotSupported, message));
    }
    if facts.tikv_replicas <= 0 {
        return Err(Failure::new(Reason::NoTiKV, format!("TidbCluster {namespace}/{cluster} has no TiKV replicas")));
    }
    Ok(())
}

/// The snapshot plan, if the cluster can be backed up as it is.
pub fn plan(view: ClusterView) -> Result<SnapshotPlan, Failure> {
    if !version_at_least(&view.version, MIN_CLUSTER_VERSION) {
        return Err(Failure::new(
            Reason::ClusterVersionTooOld,
            format!("cluster version {} is below 6.3.0, the first with EBS snapshot backup", view.version),
        ));
    }
    stores(&view)?;
    if let Some(e) = &view.bucket_error {
        return Err(Failure::new(Reason::BucketNotAccessible, format!("{}: {e}", view.location)));
    }
    if view.meta_exists {
        let message = format!("{}/{} already exists: use a new prefix for every backup", view.location, crate::backup::meta::META_FILE);
        return Err(Failure::new(Reason::FileExistedInExternalStorage, message));
    }
    let instances = instances(&view)?;
    let volume_az = view.described.iter().map(|v| (v.volume_id.clone(), v.availability_zone.clone()));
    let tikv: BTreeSet<&str> = view.volumes.tikv.iter().flat_map(|s| s.volumes.iter().map(|v| v.volume_id.as_str())).collect();
    let volume_az = volume_az.filter(|(id, _)| tikv.contains(id.as_str())).collect();
    Ok(SnapshotPlan {
        cluster_namespace: view.namespace,
        cluster: view.cluster,
        pd_url: view.pd_url,
        cluster_version: view.version,
        stores: view.volumes.tikv,
        pd_volumes: view.volumes.pd,
        instances,
        volume_az,
    })
}

/// Whether the Region's pending-snapshot quota has room for every snapshot of the plan.
#[derive(Debug, PartialEq)]
pub enum Room {
    Fits,
    /// Not now: pending snapshots of other backups must complete first.
    Wait(String),
    /// Never, as the quota stands.
    Never(Failure),
}

/// AWS fails CreateSnapshots with `PendingSnapshotLimitExceeded` beyond the quota, which must never
/// happen while PD is paused: so it is checked here, before.
pub fn room_for_snapshots(plan: &SnapshotPlan, pending: usize, limit: usize) -> Room {
    let wanted: usize = plan.instances.iter().map(|i| i.volume_ids.len()).sum();
    if wanted > limit {
        let message = format!(
            "this backup takes {wanted} snapshots at once, more than the Region's pending-snapshot limit {limit} (--pending-snapshot-limit; raise the AWS quota first)"
        );
        return Room::Never(Failure::new(Reason::SnapshotQuotaExceeded, message));
    }
    if pending + wanted > limit {
        return Room::Wait(format!(
            "waiting for pending snapshots to complete: {pending} pending + {wanted} for this backup would exceed the Region's limit {limit}"
        ));
    }
    Room::Fits
}

/// PD's stores and the TiKV pods match one to one, all `Up`, with no TiFlash, and the resolved ts is live.
fn stores(view: &ClusterView) -> Result<(), Failure> {
    if let Some(tiflash) = view.stores.iter().find(|s| s.is_tiflash()) {
        return Err(Failure::new(Reason::TiFlashNotSupported, format!("PD lists TiFlash store {} ({})", tiflash.id, tiflash.address)));
    }
    let ts = view.min_resolved_ts;
    if !(ts.is_real_time && ts.ts > 0 && ts.ts != u64::MAX) {
        let message = "PD's min resolved ts is not real-time: keep pd-server.min-resolved-ts-persistence-interval and TiKV's report-min-resolved-ts-interval non-zero";
        return Err(Failure::new(Reason::MinResolvedTsNotEnabled, message));
    }
    let live: Vec<_> = view.stores.iter().filter(|s| s.state_name != "Tombstone").collect();
    for store in &view.volumes.tikv {
        let Some(pd_store) = live.iter().find(|s| s.id == store.store_id) else {
            return Err(Failure::new(
                Reason::StoreMismatch,
                format!("pod {} is labelled store {}, which PD does not know", store.pod, store.store_id),
            ));
        };
        if !pd_store.address.starts_with(&format!("{}.", store.pod)) {
            return Err(Failure::new(
                Reason::StoreMismatch,
                format!("PD store {} is at {}, not pod {}", store.store_id, pd_store.address, store.pod),
            ));
        }
        if pd_store.state_name != "Up" {
            return Err(Failure::new(Reason::StoreNotUp, format!("TiKV store {} ({}) is {}", store.store_id, store.pod, pd_store.state_name)));
        }
    }
    let ours: BTreeSet<u64> = view.volumes.tikv.iter().map(|s| s.store_id).collect();
    let peer_domain = format!(".{}-tikv-peer.{}.", view.cluster, view.namespace);
    if let Some(missing) = live.iter().find(|s| s.address.contains(&peer_domain) && !ours.contains(&s.id)) {
        return Err(Failure::new(Reason::StoreMismatch, format!("PD store {} ({}) has no TiKV pod", missing.id, missing.address)));
    }
    Ok(())
}

/// One CreateSnapshots per instance: the TiKV volumes on it, every other attached volume excluded.
fn instances(view: &ClusterView) -> Result<Vec<InstancePlan>, Failure> {
    let by_id: BTreeMap<_, _> = view.described.iter().map(|v| (v.volume_id.as_str(), v)).collect();
    let mut instances: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for store in &view.volumes.tikv {
        let mut store_instance = None;
        for volume in &store.volumes {
            let Some(info) = by_id.get(volume.volume_id.as_str()) else {
                return Err(Failure::new(Reason::VolumeNotFound, format!("EBS volume {} of pod {} does not exist", volume.volume_id, store.pod)));
            };
            let Some(instance) = info.instance_id.clone() else {
                let message = format!("EBS volume {} of pod {} is not attached to an instance", volume.volume_id, store.pod);
                return Err(Failure::new(Reason::VolumeNotAttached, message));
            };
            if store_instance.get_or_insert_with(|| instance.clone()) != &instance {
                let message = format!("the volumes of pod {} are attached to different instances", store.pod);
                return Err(Failure::new(Reason::VolumesOnSeveralInstances, message));
            }
            instances.entry(instance).or_default().push(volume.volume_id.clone());
        }
    }
    if let Some(missing) = view.volumes.pd.iter().find(|v| !by_id.contains_key(v.volume_id.as_str())) {
        return Err(Failure::new(Reason::VolumeNotFound, format!("EBS volume {} of PD pod {} does not exist", missing.volume_id, missing.pod)));
    }
    Ok(instances
        .into_iter()
        .map(|(instance_id, volume_ids)| {
            let attached = view.attached.get(&instance_id).cloned().unwrap_or_default();
            let exclude_volume_ids = attached.into_iter().filter(|v| !volume_ids.contains(v)).collect();
            InstancePlan { instance_id, volume_ids, exclude_volume_ids }
        })
        .collect())
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
