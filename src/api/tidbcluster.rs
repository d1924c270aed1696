//! The parts of TiDB Operator's `TidbCluster` we read. We never write it, and we never own its CRD
//! (the test harness ships a minimal one for local stacks only).

use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};

pub fn tidbcluster_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("pingcap.com", "v1alpha1", "TidbCluster"), "tidbclusters")
}

/// What the backup needs to know about a TidbCluster, read leniently from the unstructured object.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterFacts {
    pub tls_cluster: bool,
    pub tikv_replicas: i64,
    pub pd_replicas: i64,
    pub tidb_replicas: i64,
    pub tiflash_replicas: i64,
    /// `spec.tikv.storageVolumes[].name` -> `mountPath`.
    pub tikv_storage_volumes: Vec<(String, String)>,
    pub tikv_config: serde_json::Value,
}

impl ClusterFacts {
    pub fn from_object(tc: &DynamicObject) -> Self {
        let spec = &tc.data["spec"];
        let int = |v: &serde_json::Value| v.as_i64().unwrap_or(0);
        let storage_volumes = spec["tikv"]["storageVolumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v["name"].as_str()?.to_string(), v["mountPath"].as_str().unwrap_or("").to_string())))
            .collect();
        Self {
            tls_cluster: spec["tlsCluster"]["enabled"].as_bool().unwrap_or(false),
            tikv_replicas: int(&spec["tikv"]["replicas"]),
            pd_replicas: int(&spec["pd"]["replicas"]),
            tidb_replicas: int(&spec["tidb"]["replicas"]),
            tiflash_replicas: int(&spec["tiflash"]["replicas"]),
            tikv_storage_volumes: storage_volumes,
            tikv_config: spec["tikv"]["config"].clone(),
        }
    }
}
