//! A TidbCluster as TiDB Operator on EKS leaves it, seeded into the fakes the way
//! `tests/support/fixture.rs` seeds the real stack: TiKV stores in PD, one EC2 instance per TiKV and PD
//! pod with its EBS volumes attached (plus, on each TiKV instance, a foreign data volume no PV names),
//! and the TidbCluster, Pods, bound PVCs and PVs (alternating EBS CSI and in-tree) pointing at them.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use serde_json::{Map, Value, json};

use crate::api::tidbcluster::tidbcluster_resource;
use crate::pd::Store;
use crate::testkit::{FakeApiServer, FakePd, FakeSnapshots};

pub const AZ: &str = "us-west-2a";
const CSI_DRIVER: &str = "ebs.csi.aws.com";
const RAFT_MOUNT_PATH: &str = "/var/lib/raft";

#[derive(Clone, Debug)]
pub struct TikvMember {
    pub pod: String,
    pub store_id: u64,
    pub instance_id: String,
    /// `tikv` first, then `tikv-raft` when there are two.
    pub volume_ids: Vec<String>,
    /// Attached to the same instance but not TiKV's: a backup must leave it out.
    pub foreign_volume_id: String,
}

/// What was seeded, for a test's assertions.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub namespace: String,
    pub name: String,
    pub tikv: Vec<TikvMember>,
    pub pd_volume_ids: Vec<String>,
}

impl Cluster {
    /// Every TiKV volume (what a backup must snapshot), in pod order.
    pub fn tikv_volume_ids(&self) -> Vec<String> {
        self.tikv.iter().flat_map(|m| m.volume_ids.clone()).collect()
    }
}

/// One PVC-backed pod volume: pod volume name, mount path, and whether its PV uses the CSI driver.
struct PodVolume<'a> {
    name: &'a str,
    mount_path: &'a str,
    volume_id: String,
    csi: bool,
}

fn labels(cluster: &str, component: &str) -> Map<String, Value> {
    let labels = json!({
        "app.kubernetes.io/name": "tidb-cluster",
        "app.kubernetes.io/managed-by": "tidb-operator",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/component": component,
    });
    labels.as_object().cloned().expect("an object")
}

pub fn seed(api: &FakeApiServer, pd: &FakePd, ec2: &FakeSnapshots, namespace: &str, name: &str, stores: usize, volumes_per_store: usize) -> Cluster {
    assert!((1..=2).contains(&volumes_per_store), "volumes_per_store is 1 or 2");
    let mut cluster = Cluster { namespace: namespace.into(), name: name.into(), tikv: Vec::new(), pd_volume_ids: Vec::new() };
    for i in 0..stores {
        let pod = format!("{name}-tikv-{i}");
        let instance_id = format!("i-0{:016x}", i + 1);
        ec2.add_instance(&instance_id, AZ);
        let store_id = 12 + i as u64;
        pd.add_store(Store {
            id: store_id,
            address: format!("{pod}.{name}-tikv-peer.{namespace}.svc:20160"),
            state_name: "Up".into(),
            version: "8.5.5".into(),
            labels: Vec::new(),
        });
        let volumes: Vec<PodVolume> = [("tikv", "/var/lib/tikv"), ("tikv-raft", RAFT_MOUNT_PATH)]
            .into_iter()
            .take(volumes_per_store)
            .enumerate()
            .map(|(j, (volume, mount_path))| PodVolume {
                name: volume,
                mount_path,
                volume_id: ec2.create_volume(AZ, 10, Some(&instance_id), &[("Name", &format!("{namespace}-{volume}-{pod}"))]),
                csi: (i * volumes_per_store + j).is_multiple_of(2),
            })
            .collect();
        let foreign_volume_id = ec2.create_volume(AZ, 2, Some(&instance_id), &[("purpose", "node-local scratch, not TiKV")]);
        seed_pod(api, namespace, name, "tikv", &pod, Some(store_id), &volumes);
        let volume_ids = volumes.into_iter().map(|v| v.volume_id).collect();
        cluster.tikv.push(TikvMember { pod, store_id, instance_id, volume_ids, foreign_volume_id });
    }
    let pod = format!("{name}-pd-0");
    let instance_id = "i-0pd0000000000000".to_string();
    ec2.add_instance(&instance_id, AZ);
    let volume_id = ec2.create_volume(AZ, 1, Some(&instance_id), &[]);
    seed_pod(api, namespace, name, "pd", &pod, None, &[PodVolume { name: "pd", mount_path: "/var/lib/pd", volume_id: volume_id.clone(), csi: true }]);
    cluster.pd_volume_ids.push(volume_id);
    seed_tidbcluster(api, &cluster, volumes_per_store);
    cluster
}

fn seed_tidbcluster(api: &FakeApiServer, cluster: &Cluster, volumes_per_store: usize) {
    let mut tikv = json!({"replicas": cluster.tikv.len(), "baseImage": "pingcap/tikv", "requests": {"storage": "10Gi"}, "config": {}});
    if volumes_per_store == 2 {
        tikv["storageVolumes"] = json!([{"name": "raft", "mountPath": RAFT_MOUNT_PATH, "storageSize": "10Gi"}]);
        tikv["config"] = json!({"raft-engine.dir": RAFT_MOUNT_PATH});
    }
    let stores: Map<String, Value> = cluster
        .tikv
        .iter()
        .map(|m| (m.store_id.to_string(), json!({"id": m.store_id.to_string(), "podName": m.pod, "state": "Up"})))
        .collect();
    let tc = json!({
        "apiVersion": "pingcap.com/v1alpha1", "kind": "TidbCluster",
        "metadata": {"name": cluster.name, "namespace": cluster.namespace},
        "spec": {
            "version": "v8.5.5", "timezone": "UTC", "pvReclaimPolicy": "Retain",
            "pd": {"replicas": 1, "baseImage": "pingcap/pd", "requests": {"storage": "1Gi"}},
            "tikv": tikv,
            "tidb": {"replicas": 1, "baseImage": "pingcap/tidb"},
        },
        "status": {"clusterID": "7000000000000000000", "tikv": {"phase": "Normal", "synced": true, "stores": stores}},
    });
    api.insert_dynamic(&tidbcluster_resource(), tc);
}

fn seed_pod(api: &FakeApiServer, namespace: &str, cluster: &str, component: &str, pod: &str, store_id: Option<u64>, volumes: &[PodVolume]) {
    let mut labels = labels(cluster, component);
    if let Some(id) = store_id {
        labels.insert("tidb.pingcap.com/store-id".into(), json!(id.to_string()));
    }
    for v in volumes {
        let pvc = format!("{}-{pod}", v.name);
        let pv = format!("{namespace}-{pvc}");
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": pvc, "namespace": namespace, "labels": labels, "annotations": {"tidb.pingcap.com/pod-name": pod}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}, "storageClassName": "gp3", "volumeName": pv},
            "status": {"phase": "Bound"},
        }))
        .expect("PVC");
        let claim = api.insert(&claim);
        let source = if v.csi {
            json!({"csi": {"driver": CSI_DRIVER, "volumeHandle": v.volume_id, "fsType": "ext4"}})
        } else {
            json!({"awsElasticBlockStore": {"volumeID": format!("aws://{AZ}/{}", v.volume_id), "fsType": "ext4"}})
        };
        let mut spec = json!({
            "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "gp3",
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": namespace, "name": pvc, "uid": claim.metadata.uid},
        });
        spec.as_object_mut().expect("an object").extend(source.as_object().cloned().expect("an object"));
        let mut pv_labels = labels.clone();
        pv_labels.insert("app.kubernetes.io/namespace".into(), json!(namespace));
        let volume: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": pv, "labels": pv_labels, "annotations": {"tidb.pingcap.com/pod-name": pod}},
            "spec": spec,
            "status": {"phase": "Bound"},
        }))
        .expect("PV");
        api.insert(&volume);
    }
    let pod_volumes: Vec<Value> =
        volumes.iter().map(|v| json!({"name": v.name, "persistentVolumeClaim": {"claimName": format!("{}-{pod}", v.name)}})).collect();
    let mounts: Vec<Value> = volumes.iter().map(|v| json!({"name": v.name, "mountPath": v.mount_path})).collect();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod, "namespace": namespace, "labels": labels},
        "spec": {"hostname": pod, "subdomain": format!("{cluster}-{component}-peer"), "volumes": pod_volumes,
                 "containers": [{"name": component, "image": "busybox", "volumeMounts": mounts}]},
        "status": {"phase": "Running"},
    }))
    .expect("Pod");
    api.insert(&pod);
}
