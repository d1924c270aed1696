//! TidbCluster -> TiKV/PD pods -> PVCs -> PVs -> EBS volume ids, as TiDB Operator lays them out.

use crate::reason::{Reason, Reasoned};
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};

use crate::api::tidbcluster::ClusterFacts;

pub const STORE_ID_LABEL: &str = "tidb.pingcap.com/store-id";
/// The PV annotation TiDB Operator's and BR's restore use to map a PV to its volume.
pub const VOLUME_ID_ANNOTATION: &str = "temporary/volume-id";
pub const DATA_DIR_TYPE: &str = "storage.data-dir";
const EBS_CSI_DRIVER: &str = "ebs.csi.aws.com";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("listing {what}: {source}")]
    Kube { what: String, source: kube::Error },
    #[error("no TiKV pods found for TidbCluster {namespace}/{cluster}")]
    NoTikvPods { namespace: String, cluster: String },
    #[error("TiKV pod {pod} has no {label} label (is the store registered?)")]
    NoStoreId { pod: String, label: &'static str },
    #[error("pod {pod} volume {volume} uses PVC {pvc}, which does not exist")]
    PvcNotFound { pod: String, volume: String, pvc: String },
    #[error("PVC {pvc} is not bound to a PV")]
    PvcUnbound { pvc: String },
    #[error("PVC {pvc} is bound to PV {pv}, which does not exist")]
    PvNotFound { pvc: String, pv: String },
    #[error("PV {pv} is not an EBS volume ({detail})")]
    NotEbs { pv: String, detail: String },
    #[error("pod {pod} has no volume {volume} (expected from the TidbCluster spec)")]
    PodVolumeMissing { pod: String, volume: String },
}

impl Reasoned for VolumeError {
    fn reason(&self) -> Reason {
        match self {
            Self::Kube { .. } => Reason::KubernetesAPIFailed,
            Self::NoTikvPods { .. } => Reason::TiKVPodsNotFound,
            Self::NoStoreId { .. } => Reason::StoreIDMissing,
            Self::PvcNotFound { .. } => Reason::PVCNotFound,
            Self::PvcUnbound { .. } => Reason::PVCNotBound,
            Self::PvNotFound { .. } => Reason::PVNotFound,
            Self::NotEbs { .. } => Reason::GetVolumeIDFailed,
            Self::PodVolumeMissing { .. } => Reason::PodVolumeMissing,
        }
    }
}

/// One EBS volume of a TiKV store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreVolume {
    pub volume_id: String,
    /// `storage.data-dir`, or the TiKV config key whose value is this volume's mount path.
    #[serde(rename = "type")]
    pub type_: String,
    pub mount_path: String,
    pub pvc: String,
    pub pv: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TikvStoreVolumes {
    pub store_id: u64,
    pub pod: String,
    pub volumes: Vec<StoreVolume>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PdVolume {
    pub pod: String,
    pub volume_id: String,
    pub pvc: String,
    pub pv: String,
}

/// Everything resolved from Kubernetes, plus the objects `backupmeta` records.
#[derive(Clone, Debug)]
pub struct ResolvedVolumes {
    pub tikv: Vec<TikvStoreVolumes>,
    pub pd: Vec<PdVolume>,
    /// TiKV PVs (annotated with `temporary/volume-id`) and PVCs, for backupmeta.
    pub pvs: Vec<PersistentVolume>,
    pub pvcs: Vec<PersistentVolumeClaim>,
}

fn selector(cluster: &str, component: &str) -> String {
    format!(
        "app.kubernetes.io/name=tidb-cluster,app.kubernetes.io/managed-by=tidb-operator,app.kubernetes.io/instance={cluster},app.kubernetes.io/component={component}"
    )
}

/// The EBS volume id of a PV: CSI `ebs.csi.aws.com` handle or in-tree `awsElasticBlockStore` (`aws://az/vol-…`).
pub fn ebs_volume_id(pv: &PersistentVolume) -> Result<String, String> {
    let spec = pv.spec.as_ref().ok_or("PV has no spec")?;
    let raw = if let Some(csi) = &spec.csi {
        if csi.driver != EBS_CSI_DRIVER {
            return Err(format!("CSI driver {} is not {EBS_CSI_DRIVER}", csi.driver));
        }
        csi.volume_handle.clone()
    } else if let Some(ebs) = &spec.aws_elastic_block_store {
        ebs.volume_id.clone()
    } else {
        return Err("neither a CSI ebs.csi.aws.com nor an awsElasticBlockStore volume".into());
    };
    let id = raw.rsplit('/').next().unwrap_or_default();
    if id.starts_with("vol-") && id.len() > 4 { Ok(id.to_string()) } else { Err(format!("volume id {raw:?} is not vol-…")) }
}

/// Pod volume name -> (mount path, type), from the TidbCluster spec, as TiDB Operator's snapshotter.
pub fn tikv_volume_layout(facts: &ClusterFacts) -> Vec<(String, String, String)> {
    let mut layout = vec![("tikv".to_string(), "/var/lib/tikv".to_string(), DATA_DIR_TYPE.to_string())];
    for (name, mount_path) in &facts.tikv_storage_volumes {
        let type_ = facts
            .tikv_config
            .as_object()
            .and_then(|config| config.iter().find(|(_, v)| v.as_str() == Some(mount_path.as_str())).map(|(k, _)| k.clone()))
            .unwrap_or_default();
        layout.push((format!("tikv-{name}"), mount_path.clone(), type_));
    }
    layout
}

fn claim_of(pod: &Pod, volume: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == volume)?
        .persistent_volume_claim
        .as_ref()
        .map(|c| c.claim_name.clone())
}

struct Lookup {
    pvcs: BTreeMap<String, PersistentVolumeClaim>,
    pvs: BTreeMap<String, PersistentVolume>,
}

impl Lookup {
    fn resolve(&self, pod: &str, volume: &str, pvc_name: &str) -> Result<(PersistentVolumeClaim, PersistentVolume, String), VolumeError> {
        let pvc = self.pvcs.get(pvc_name).ok_or_else(|| VolumeError::PvcNotFound { pod: pod.into(), volume: volume.into(), pvc: pvc_name.into() })?;
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| VolumeError::PvcUnbound { pvc: pvc_name.into() })?;
        let pv = self.pvs.get(&pv_name).ok_or_else(|| VolumeError::PvNotFound { pvc: pvc_name.into(), pv: pv_name.clone() })?;
        let volume_id = ebs_volume_id(pv).map_err(|detail| VolumeError::NotEbs { pv: pv_name, detail })?;
        Ok((pvc.clone(), pv.clone(), volume_id))
    }
}

pub async fn resolve_volumes(client: &kube::Client, namespace: &str, cluster: &str, facts: &ClusterFacts) -> Result<ResolvedVolumes, VolumeError> {
    let kube_err = |what: &str| {
        let what = what.to_string();
        move |source| VolumeError::Kube { what, source }
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let list = |component: &str| ListParams::default().labels(&selector(cluster, component));
    let (tikv_pods, pd_pods, claims, volumes) = tokio::try_join!(
        async { pods.list(&list("tikv")).await.map_err(kube_err("TiKV pods")) },
        async { pods.list(&list("pd")).await.map_err(kube_err("PD pods")) },
        async { pvcs.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={cluster}"))).await.map_err(kube_err("PVCs")) },
        async {
            pvs.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={cluster},app.kubernetes.io/namespace={namespace}")))
                .await
                .map_err(kube_err("PVs"))
        },
    )?;
    let lookup = Lookup {
        pvcs: claims.items.into_iter().filter_map(|c| Some((c.metadata.name.clone()?, c))).collect(),
        pvs: volumes.items.into_iter().filter_map(|v| Some((v.metadata.name.clone()?, v))).collect(),
    };
    let mut tikv_pods = tikv_pods.items;
    tikv_pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if tikv_pods.is_empty() {
        return Err(VolumeError::NoTikvPods { namespace: namespace.into(), cluster: cluster.into() });
    }
    let layout = tikv_volume_layout(facts);
    let mut resolved = ResolvedVolumes { tikv: vec![], pd: vec![], pvs: vec![], pvcs: vec![] };
    for pod in &tikv_pods {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let store_id = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(STORE_ID_LABEL))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|id| *id > 0)
            .ok_or_else(|| VolumeError::NoStoreId { pod: pod_name.clone(), label: STORE_ID_LABEL })?;
        let mut store = TikvStoreVolumes { store_id, pod: pod_name.clone(), volumes: vec![] };
        for (volume, mount_path, type_) in &layout {
            let claim = claim_of(pod, volume).ok_or_else(|| VolumeError::PodVolumeMissing { pod: pod_name.clone(), volume: volume.clone() })?;
            let (pvc, mut pv, volume_id) = lookup.resolve(&pod_name, volume, &claim)?;
            pv.metadata.annotations.get_or_insert_with(Default::default).insert(VOLUME_ID_ANNOTATION.into(), volume_id.clone());
            store.volumes.push(StoreVolume {
                volume_id,
                type_: type_.clone(),
                mount_path: mount_path.clone(),
                pvc: claim.clone(),
                pv: pv.metadata.name.clone().unwrap_or_default(),
            });
            resolved.pvcs.push(pvc);
            resolved.pvs.push(pv);
        }
        resolved.tikv.push(store);
    }
    let mut pd_pods = pd_pods.items;
    pd_pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in &pd_pods {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let Some(claim) = claim_of(pod, "pd") else { continue };
        let (_, pv, volume_id) = lookup.resolve(&pod_name, "pd", &claim)?;
        resolved.pd.push(PdVolume { pod: pod_name, volume_id, pvc: claim, pv: pv.metadata.name.unwrap_or_default() });
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(spec: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": "pv"}, "spec": spec})).unwrap()
    }

    #[test]
    fn volume_ids_from_csi_and_in_tree() {
        assert_eq!(ebs_volume_id(&pv(json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-0abc"}}))), Ok("vol-0abc".into()));
        assert_eq!(ebs_volume_id(&pv(json!({"awsElasticBlockStore": {"volumeID": "aws://us-west-2a/vol-0def"}}))), Ok("vol-0def".into()));
        assert!(ebs_volume_id(&pv(json!({"csi": {"driver": "pd.csi.storage.gke.io", "volumeHandle": "x"}}))).is_err());
        assert!(ebs_volume_id(&pv(json!({"hostPath": {"path": "/x"}}))).is_err());
        assert!(ebs_volume_id(&pv(json!({"awsElasticBlockStore": {"volumeID": "aws://us-west-2a/"}}))).is_err());
    }

    #[test]
    fn layout_follows_storage_volumes_and_flat_config_keys() {
        let facts = ClusterFacts {
            tls_cluster: false,
            tikv_replicas: 3,
            pd_replicas: 1,
            tidb_replicas: 1,
            tiflash_replicas: 0,
            tikv_storage_volumes: vec![("raft".into(), "/var/lib/raft".into()), ("wal".into(), "/var/lib/wal".into())],
            tikv_config: json!({"raft-engine.dir": "/var/lib/raft"}),
        };
        let layout = tikv_volume_layout(&facts);
        assert_eq!(layout[0], ("tikv".into(), "/var/lib/tikv".into(), DATA_DIR_TYPE.into()));
        assert_eq!(layout[1], ("tikv-raft".into(), "/var/lib/raft".into(), "raft-engine.dir".into()));
        assert_eq!(layout[2].2, "");
    }
}
