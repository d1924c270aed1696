//! A TiDB cluster as TiDB Operator on EKS would leave it, without any of it running: fake TiKV stores in
//! PD, one EC2 instance per TiKV (and PD) pod with its EBS volumes attached, and the Kubernetes objects
//! (TidbCluster with status, Nodes, Pods, bound PVCs and PVs) that point at them.
//!
//! Every TiKV instance also has a *foreign* data volume that no PV refers to (a backup must leave it
//! out), and its own root volume. PVs alternate between the EBS CSI driver and the in-tree plugin.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{InstanceType, Placement, ResourceType, Tag, TagSpecification, VolumeType};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::Stack;

/// How many AWS / Kubernetes calls the fixture keeps in flight.
const PARALLEL: usize = 16;
pub const TIKV_DATA_VOLUME: &str = "tikv";
pub const TIKV_RAFT_VOLUME: &str = "tikv-raft";
pub const RAFT_MOUNT_PATH: &str = "/var/lib/raft";
pub const TIKV_WAL_VOLUME: &str = "tikv-wal";
pub const WAL_MOUNT_PATH: &str = "/var/lib/wal";
pub const CSI_DRIVER: &str = "ebs.csi.aws.com";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixtureVolume {
    pub volume_id: String,
    /// The pod volume name: `tikv`, `tikv-raft`, `tikv-wal` or `pd`.
    pub pod_volume: String,
    pub pvc: String,
    pub pv: String,
    /// Device the volume is attached as on its instance.
    pub device: String,
    pub size_gib: i32,
    /// `spec.csi` (EBS CSI driver) when true, `spec.awsElasticBlockStore` (in-tree) when false.
    pub csi: bool,
}

#[derive(Clone, Debug)]
pub struct TikvMember {
    pub index: usize,
    pub pod: String,
    pub store_id: u64,
    /// The store's address in PD: `<pod>.<name>-tikv-peer.<ns>.svc:20160`.
    pub address: String,
    pub node: String,
    pub instance_id: String,
    pub root_volume_id: String,
    /// `tikv` first, then `tikv-raft` when there are two, then `tikv-wal` when there are three.
    pub volumes: Vec<FixtureVolume>,
    /// Attached to the same instance but not TiKV's: a backup must not include it.
    pub foreign_volume_id: String,
}

impl TikvMember {
    pub fn volume_ids(&self) -> Vec<String> {
        self.volumes.iter().map(|v| v.volume_id.clone()).collect()
    }
}

#[derive(Clone, Debug)]
pub struct PdMember {
    pub index: usize,
    pub pod: String,
    pub node: String,
    pub instance_id: String,
    pub volume: FixtureVolume,
}

#[derive(Clone, Debug)]
pub struct TidbClusterFixture {
    pub namespace: String,
    pub name: String,
    pub az: String,
    /// PD store ids, in TiKV pod order.
    pub store_ids: Vec<u64>,
    /// In pod order (`<name>-tikv-0`, `-1`, ...).
    pub tikv: Vec<TikvMember>,
    pub pd: Vec<PdMember>,
    pub foreign_volume_ids: Vec<String>,
    pub pd_volume_ids: Vec<String>,
}

impl TidbClusterFixture {
    /// `stores` TiKV pods with `volumes_per_store` (1: `tikv`; 2: plus `tikv-raft`; 3: plus `tikv-wal`) volumes
    /// each, one PD pod.
    pub async fn create(stack: &Stack, namespace: &str, name: &str, stores: usize, volumes_per_store: usize) -> TidbClusterFixture {
        Self::builder(name).stores(stores).volumes_per_store(volumes_per_store).create(stack, namespace).await
    }

    pub fn builder(name: &str) -> FixtureBuilder {
        FixtureBuilder {
            name: name.to_string(),
            stores: 3,
            volumes_per_store: 1,
            pd_replicas: 1,
            tikv_volume_gib: 10,
            pd_volume_gib: 1,
            foreign_volume_gib: 2,
            version: "v8.5.5".into(),
        }
    }

    pub fn by_store_id(&self) -> BTreeMap<u64, &TikvMember> {
        self.tikv.iter().map(|m| (m.store_id, m)).collect()
    }

    /// Every TiKV volume (what a backup must snapshot), in pod order.
    pub fn tikv_volume_ids(&self) -> Vec<String> {
        self.tikv.iter().flat_map(TikvMember::volume_ids).collect()
    }

    /// Value of the `tidb-ebs-backup.test/fixture` tag on every EC2 resource of this fixture.
    pub fn tag(&self) -> String {
        fixture_tag(&self.namespace, &self.name)
    }
}

fn fixture_tag(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

pub struct FixtureBuilder {
    name: String,
    stores: usize,
    volumes_per_store: usize,
    pd_replicas: usize,
    tikv_volume_gib: i32,
    pd_volume_gib: i32,
    foreign_volume_gib: i32,
    version: String,
}

impl FixtureBuilder {
    pub fn stores(mut self, n: usize) -> Self {
        self.stores = n;
        self
    }
    pub fn volumes_per_store(mut self, n: usize) -> Self {
        self.volumes_per_store = n;
        self
    }

    pub async fn create(self, stack: &Stack, namespace: &str) -> TidbClusterFixture {
        assert!((1..=1000).contains(&self.stores), "fake-tikv registers 1..1000 stores");
        assert!((1..=3).contains(&self.volumes_per_store), "volumes_per_store is 1, 2 or 3");
        assert!(self.pd_replicas >= 1, "a TidbCluster needs PD");
        let (ns, name) = (namespace, self.name.as_str());
        let az = format!("{}a", stack.aws_region);
        let tag = fixture_tag(ns, name);

        // ---- PD stores --------------------------------------------------------------------------
        let mut fake = stack.register_tikv_stores(ns, name, self.stores).await;
        fake.sort_by_key(|s| pod_index(&s.pod));
        assert_eq!(fake.len(), self.stores, "fake-tikv registered {fake:?}");

        // ---- EC2: one instance per TiKV and PD pod ----------------------------------------------
        let ec2 = stack.ec2_client().await;
        let instance_count = (self.stores + self.pd_replicas) as i32;
        let run = ec2
            .run_instances()
            .image_id("ami-0a1b2c3d4e5f60718")
            .instance_type(InstanceType::M5Xlarge)
            .min_count(instance_count)
            .max_count(instance_count)
            .placement(Placement::builder().availability_zone(&az).build())
            .tag_specifications(tags(ResourceType::Instance, &[("tidb-ebs-backup.test/fixture", &tag)]))
            .send()
            .await
            .unwrap_or_else(|e| panic!("RunInstances for {tag}: {e:?}"));
        let instance_ids: Vec<String> = run.instances().iter().filter_map(|i| i.instance_id().map(str::to_string)).collect();
        assert_eq!(instance_ids.len(), instance_count as usize, "RunInstances made {instance_ids:?}");
        let described = ec2
            .describe_instances()
            .set_instance_ids(Some(instance_ids.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeInstances {instance_ids:?}: {e:?}"));
        let mut root_volumes = BTreeMap::new();
        for instance in described.reservations().iter().flat_map(|r| r.instances()) {
            let id = instance.instance_id().unwrap_or_default().to_string();
            let root_device = instance.root_device_name().unwrap_or("/dev/sda1");
            let root = instance
                .block_device_mappings()
                .iter()
                .find(|m| m.device_name() == Some(root_device))
                .and_then(|m| m.ebs())
                .and_then(|e| e.volume_id())
                .unwrap_or_default()
                .to_string();
            root_volumes.insert(id, root);
        }

        // ---- Plan every volume, PVC and PV ------------------------------------------------------
        let mut tikv: Vec<TikvMember> = vec![];
        for (i, store) in fake.iter().enumerate() {
            let instance_id = instance_ids[i].clone();
            let volumes = (0..self.volumes_per_store)
                .map(|j| {
                    let pod_volume = [TIKV_DATA_VOLUME, TIKV_RAFT_VOLUME, TIKV_WAL_VOLUME][j];
                    let pvc = format!("{pod_volume}-{}", store.pod);
                    FixtureVolume {
                        volume_id: String::new(),
                        pod_volume: pod_volume.to_string(),
                        pv: format!("{ns}-{pvc}"),
                        pvc,
                        device: format!("/dev/xvdb{}", (b'a' + j as u8) as char),
                        size_gib: self.tikv_volume_gib,
                        csi: (i * self.volumes_per_store + j).is_multiple_of(2),
                    }
                })
                .collect();
            tikv.push(TikvMember {
                index: i,
                pod: store.pod.clone(),
                store_id: store.id,
                address: store.address.clone(),
                node: node_name(ns, &store.pod),
                root_volume_id: root_volumes.get(&instance_id).cloned().unwrap_or_default(),
                instance_id,
                volumes,
                foreign_volume_id: String::new(),
            });
        }
        let mut pd: Vec<PdMember> = (0..self.pd_replicas)
            .map(|i| {
                let pod = format!("{name}-pd-{i}");
                let pvc = format!("pd-{pod}");
                let instance_id = instance_ids[self.stores + i].clone();
                PdMember {
                    index: i,
                    node: node_name(ns, &pod),
                    instance_id,
                    volume: FixtureVolume {
                        volume_id: String::new(),
                        pod_volume: "pd".into(),
                        pv: format!("{ns}-{pvc}"),
                        pvc,
                        device: "/dev/xvdba".into(),
                        size_gib: self.pd_volume_gib,
                        csi: true,
                    },
                    pod,
                }
            })
            .collect();

        // ---- EBS volumes: create and attach -----------------------------------------------------
        enum Slot {
            Tikv(usize, usize),
            Foreign(usize),
            Pd(usize),
        }
        /// A volume to create and attach; it comes back as (slot, volume id).
        struct Wanted {
            slot: Slot,
            instance: String,
            device: String,
            size_gib: i32,
            tags: Vec<(String, String)>,
        }
        let mut wanted: Vec<Wanted> = vec![];
        let fixture_tag_kv = ("tidb-ebs-backup.test/fixture".to_string(), tag.clone());
        for m in &tikv {
            for (j, v) in m.volumes.iter().enumerate() {
                let (instance, device) = (m.instance_id.clone(), v.device.clone());
                wanted.push(Wanted { slot: Slot::Tikv(m.index, j), instance, device, size_gib: v.size_gib, tags: csi_tags(ns, v) });
            }
            let foreign_tags = vec![
                ("Name".to_string(), format!("{ns}-{}-scratch", m.pod)),
                ("purpose".to_string(), "node-local scratch, not TiKV".to_string()),
                fixture_tag_kv.clone(),
            ];
            let (instance, device) = (m.instance_id.clone(), "/dev/xvdf".to_string());
            wanted.push(Wanted { slot: Slot::Foreign(m.index), instance, device, size_gib: self.foreign_volume_gib, tags: foreign_tags });
        }
        for p in &pd {
            let (instance, device) = (p.instance_id.clone(), p.volume.device.clone());
            wanted.push(Wanted { slot: Slot::Pd(p.index), instance, device, size_gib: p.volume.size_gib, tags: csi_tags(ns, &p.volume) });
        }
        let created: Vec<(Slot, String)> = stream::iter(wanted)
            .map(|Wanted { slot, instance, device, size_gib: size, tags: mut volume_tags }| {
                let ec2 = ec2.clone();
                let az = az.clone();
                if !volume_tags.iter().any(|(k, _)| k == "tidb-ebs-backup.test/fixture") {
                    volume_tags.push(fixture_tag_kv.clone());
                }
                async move {
                    let pairs: Vec<(&str, &str)> = volume_tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let volume = ec2
                        .create_volume()
                        .availability_zone(&az)
                        .size(size)
                        .volume_type(VolumeType::Gp3)
                        .tag_specifications(tags(ResourceType::Volume, &pairs))
                        .send()
                        .await
                        .map_err(|e| format!("CreateVolume for {instance} {device}: {e:?}"))?;
                    let volume_id = volume.volume_id().unwrap_or_default().to_string();
                    ec2.attach_volume()
                        .volume_id(&volume_id)
                        .instance_id(&instance)
                        .device(&device)
                        .send()
                        .await
                        .map_err(|e| format!("AttachVolume {volume_id} to {instance} as {device}: {e:?}"))?;
                    Ok::<_, String>((slot, volume_id))
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for (slot, volume_id) in created {
            match slot {
                Slot::Tikv(i, j) => tikv[i].volumes[j].volume_id = volume_id,
                Slot::Foreign(i) => tikv[i].foreign_volume_id = volume_id,
                Slot::Pd(i) => pd[i].volume.volume_id = volume_id,
            }
        }

        let fixture = TidbClusterFixture {
            namespace: ns.to_string(),
            name: name.to_string(),
            az,
            store_ids: tikv.iter().map(|m| m.store_id).collect(),
            foreign_volume_ids: tikv.iter().map(|m| m.foreign_volume_id.clone()).collect(),
            pd_volume_ids: pd.iter().map(|p| p.volume.volume_id.clone()).collect(),
            tikv,
            pd,
        };

        // ---- Kubernetes objects -----------------------------------------------------------------
        let client = stack.kube_client().await;
        create_tidbcluster(&client, &fixture, &self).await;
        let mut jobs: Vec<KubeJob> = vec![];
        for m in &fixture.tikv {
            jobs.push(KubeJob::Node { name: m.node.clone(), instance_id: m.instance_id.clone() });
            jobs.push(KubeJob::Pod { member: PodPlan::tikv(&fixture, m) });
        }
        for p in &fixture.pd {
            jobs.push(KubeJob::Node { name: p.node.clone(), instance_id: p.instance_id.clone() });
            jobs.push(KubeJob::Pod { member: PodPlan::pd(&fixture, p) });
        }
        stream::iter(jobs)
            .map(|job| {
                let client = client.clone();
                let fixture = &fixture;
                async move { job.run(&client, fixture).await }
            })
            .buffer_unordered(PARALLEL)
            .collect::<Vec<()>>()
            .await;
        fixture
    }
}

fn pod_index(pod: &str) -> usize {
    pod.rsplit('-').next().and_then(|i| i.parse().ok()).unwrap_or(usize::MAX)
}

fn node_name(ns: &str, pod: &str) -> String {
    format!("node-{ns}-{pod}")
}

fn tags(resource: ResourceType, pairs: &[(&str, &str)]) -> TagSpecification {
    let mut spec = TagSpecification::builder().resource_type(resource);
    for (k, v) in pairs {
        spec = spec.tags(Tag::builder().key(*k).value(*v).build());
    }
    spec.build()
}

/// The tags the EBS CSI driver puts on the volumes it provisions.
fn csi_tags(ns: &str, v: &FixtureVolume) -> Vec<(String, String)> {
    vec![
        ("kubernetes.io/created-for/pvc/name".into(), v.pvc.clone()),
        ("kubernetes.io/created-for/pvc/namespace".into(), ns.to_string()),
        ("kubernetes.io/created-for/pv/name".into(), v.pv.clone()),
        ("ebs.csi.aws.com/cluster".into(), "true".into()),
        ("CSIVolumeName".into(), v.pv.clone()),
        ("Name".into(), format!("{ns}-dynamic-{}", v.pv)),
    ]
}

fn labels(fixture: &TidbClusterFixture, component: &str) -> serde_json::Map<String, Value> {
    let mut labels = serde_json::Map::new();
    labels.insert("app.kubernetes.io/name".into(), json!("tidb-cluster"));
    labels.insert("app.kubernetes.io/managed-by".into(), json!("tidb-operator"));
    labels.insert("app.kubernetes.io/instance".into(), json!(fixture.name));
    labels.insert("app.kubernetes.io/component".into(), json!(component));
    labels
}

async fn create_tidbcluster(client: &kube::Client, fixture: &TidbClusterFixture, b: &FixtureBuilder) {
    let (ns, name) = (&fixture.namespace, &fixture.name);
    let mut tikv_spec = json!({
        "replicas": fixture.tikv.len(),
        "baseImage": "pingcap/tikv",
        "requests": {"storage": format!("{}Gi", b.tikv_volume_gib)},
        "config": {},
    });
    if b.volumes_per_store >= 2 {
        let size = format!("{}Gi", b.tikv_volume_gib);
        let mut volumes = vec![json!({"name": "raft", "mountPath": RAFT_MOUNT_PATH, "storageSize": size})];
        tikv_spec["config"] = json!({"raft-engine.dir": RAFT_MOUNT_PATH});
        if b.volumes_per_store >= 3 {
            volumes.push(json!({"name": "wal", "mountPath": WAL_MOUNT_PATH, "storageSize": size}));
            tikv_spec["config"]["rocksdb.wal-dir"] = json!(WAL_MOUNT_PATH);
        }
        tikv_spec["storageVolumes"] = json!(volumes);
    }
    let now = jiff::Timestamp::now().to_string();
    let stores: serde_json::Map<String, Value> = fixture
        .tikv
        .iter()
        .map(|m| {
            let host = m.address.rsplit_once(':').map_or(m.address.as_str(), |(h, _)| h);
            (
                m.store_id.to_string(),
                json!({"id": m.store_id.to_string(), "podName": m.pod, "ip": host, "leaderCount": 0,
                       "state": "Up", "lastTransitionTime": now}),
            )
        })
        .collect();
    let pd_members: serde_json::Map<String, Value> = fixture
        .pd
        .iter()
        .map(|p| {
            let url = format!("http://{}.{name}-pd-peer.{ns}.svc:2379", p.pod);
            (
                p.pod.clone(),
                json!({"name": p.pod, "id": (p.index + 1).to_string(), "clientURL": url,
                                   "health": true, "lastTransitionTime": now}),
            )
        })
        .collect();
    let tc = json!({
        "apiVersion": "pingcap.com/v1alpha1",
        "kind": "TidbCluster",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "version": b.version,
            "timezone": "UTC",
            "pvReclaimPolicy": "Retain",
            "pd": {"replicas": fixture.pd.len(), "baseImage": "pingcap/pd",
                   "requests": {"storage": format!("{}Gi", b.pd_volume_gib)}},
            "tikv": tikv_spec,
            "tidb": {"replicas": 1, "baseImage": "pingcap/tidb"},
        },
        "status": {
            "clusterID": "7000000000000000000",
            "pd": {"phase": "Normal", "synced": true, "members": pd_members},
            "tikv": {"phase": "Normal", "synced": true, "stores": stores},
            "tidb": {"phase": "Normal"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "lastUpdateTime": now,
                            "lastTransitionTime": now}],
        },
    });
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &tidb_ebs_backup::api::tidbcluster::tidbcluster_resource());
    let object: DynamicObject = serde_json::from_value(tc).expect("TidbCluster object");
    api.create(&PostParams::default(), &object).await.unwrap_or_else(|e| panic!("creating TidbCluster {ns}/{name}: {e}"));
}

struct PodPlan {
    pod: String,
    component: &'static str,
    node: String,
    store_id: Option<u64>,
    /// (container mount path, volume)
    volumes: Vec<(String, FixtureVolume)>,
    subdomain: String,
    ip: String,
}

impl PodPlan {
    fn tikv(fixture: &TidbClusterFixture, m: &TikvMember) -> Self {
        PodPlan {
            pod: m.pod.clone(),
            component: "tikv",
            node: m.node.clone(),
            store_id: Some(m.store_id),
            volumes: m
                .volumes
                .iter()
                .map(|v| {
                    let path = match v.pod_volume.as_str() {
                        TIKV_DATA_VOLUME => "/var/lib/tikv",
                        TIKV_WAL_VOLUME => WAL_MOUNT_PATH,
                        _ => RAFT_MOUNT_PATH,
                    };
                    (path.to_string(), v.clone())
                })
                .collect(),
            subdomain: format!("{}-tikv-peer", fixture.name),
            ip: format!("10.1.{}.{}", m.index / 250, m.index % 250 + 2),
        }
    }

    fn pd(fixture: &TidbClusterFixture, p: &PdMember) -> Self {
        PodPlan {
            pod: p.pod.clone(),
            component: "pd",
            node: p.node.clone(),
            store_id: None,
            volumes: vec![("/var/lib/pd".into(), p.volume.clone())],
            subdomain: format!("{}-pd-peer", fixture.name),
            ip: format!("10.2.0.{}", p.index + 2),
        }
    }
}

enum KubeJob {
    Node { name: String, instance_id: String },
    Pod { member: PodPlan },
}

impl KubeJob {
    async fn run(self, client: &kube::Client, fixture: &TidbClusterFixture) {
        match self {
            KubeJob::Node { name, instance_id } => create_node(client, fixture, &name, &instance_id).await,
            KubeJob::Pod { member } => create_pod_with_storage(client, fixture, &member).await,
        }
    }
}

async fn create_node(client: &kube::Client, fixture: &TidbClusterFixture, name: &str, instance_id: &str) {
    let region = fixture.az.trim_end_matches(|c: char| c.is_ascii_lowercase());
    let node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m5.xlarge",
                "topology.kubernetes.io/region": region,
                "topology.kubernetes.io/zone": fixture.az,
                "topology.ebs.csi.aws.com/zone": fixture.az,
                "tidb-ebs-backup.test/namespace": fixture.namespace,
            },
        },
        "spec": {"providerID": format!("aws:///{}/{instance_id}", fixture.az)},
    }))
    .expect("Node object");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("creating Node {name}: {e}"));
}

async fn create_pod_with_storage(client: &kube::Client, fixture: &TidbClusterFixture, plan: &PodPlan) {
    let ns = fixture.namespace.as_str();
    let mut labels = labels(fixture, plan.component);
    if let Some(id) = plan.store_id {
        labels.insert("tidb.pingcap.com/store-id".into(), json!(id.to_string()));
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    let status = PatchParams::default();

    for (_, v) in &plan.volumes {
        let size = format!("{}Gi", v.size_gib);
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {
                "name": v.pvc,
                "labels": labels,
                "annotations": {
                    "tidb.pingcap.com/pod-name": plan.pod,
                    "volume.kubernetes.io/selected-node": plan.node,
                    "pv.kubernetes.io/bind-completed": "yes",
                    "pv.kubernetes.io/bound-by-controller": "yes",
                    "volume.kubernetes.io/storage-provisioner": CSI_DRIVER,
                },
            },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": size}},
                "storageClassName": "gp3",
                "volumeMode": "Filesystem",
                "volumeName": v.pv,
            },
        }))
        .expect("PVC object");
        let pvc = pvcs.create(&pp, &pvc).await.unwrap_or_else(|e| panic!("creating PVC {ns}/{}: {e}", v.pvc));

        let mut pv_labels = labels.clone();
        pv_labels.insert("app.kubernetes.io/namespace".into(), json!(ns));
        let source = if v.csi {
            json!({"csi": {"driver": CSI_DRIVER, "volumeHandle": v.volume_id, "fsType": "ext4",
                           "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity": "harness-ebs-csi"}}})
        } else {
            json!({"awsElasticBlockStore": {"volumeID": format!("aws://{}/{}", fixture.az, v.volume_id), "fsType": "ext4"}})
        };
        let zone_key = if v.csi { "topology.ebs.csi.aws.com/zone" } else { "topology.kubernetes.io/zone" };
        let mut pv_spec = json!({
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "gp3",
            "volumeMode": "Filesystem",
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns, "name": v.pvc,
                         "uid": pvc.metadata.uid, "resourceVersion": pvc.metadata.resource_version},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": zone_key, "operator": "In", "values": [fixture.az]}]}]}},
        });
        pv_spec.as_object_mut().unwrap().extend(source.as_object().unwrap().clone());
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {
                "name": v.pv,
                "labels": pv_labels,
                "annotations": {
                    "tidb.pingcap.com/pod-name": plan.pod,
                    "pv.kubernetes.io/provisioned-by": if v.csi { CSI_DRIVER } else { "kubernetes.io/aws-ebs" },
                },
            },
            "spec": pv_spec,
        }))
        .expect("PV object");
        pvs.create(&pp, &pv).await.unwrap_or_else(|e| panic!("creating PV {}: {e}", v.pv));
        pvs.patch_status(&v.pv, &status, &Patch::Merge(json!({"status": {"phase": "Bound"}})))
            .await
            .unwrap_or_else(|e| panic!("PV {} status: {e}", v.pv));
        pvcs.patch_status(
            &v.pvc,
            &status,
            &Patch::Merge(json!({"status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"],
                                            "capacity": {"storage": size}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("PVC {ns}/{} status: {e}", v.pvc));
    }

    let volumes: Vec<Value> =
        plan.volumes.iter().map(|(_, v)| json!({"name": v.pod_volume, "persistentVolumeClaim": {"claimName": v.pvc}})).collect();
    let mounts: Vec<Value> = plan.volumes.iter().map(|(path, v)| json!({"name": v.pod_volume, "mountPath": path})).collect();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": plan.pod, "labels": labels},
        "spec": {
            "nodeName": plan.node,
            "hostname": plan.pod,
            "subdomain": plan.subdomain,
            "containers": [{"name": plan.component, "image": "busybox", "command": ["sleep", "infinity"],
                            "volumeMounts": mounts}],
            "volumes": volumes,
        },
    }))
    .expect("Pod object");
    pods.create(&pp, &pod).await.unwrap_or_else(|e| panic!("creating Pod {ns}/{}: {e}", plan.pod));
    let now = jiff::Timestamp::now().to_string();
    pods.patch_status(
        &plan.pod,
        &status,
        &Patch::Merge(json!({"status": {
            "phase": "Running",
            "podIP": plan.ip,
            "podIPs": [{"ip": plan.ip}],
            "hostIP": "10.0.0.1",
            "startTime": now,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
        }})),
    )
    .await
    .unwrap_or_else(|e| panic!("Pod {ns}/{} status: {e}", plan.pod));
}
