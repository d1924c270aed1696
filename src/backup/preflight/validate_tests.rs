use super::*;
use crate::k8s::volumes::{PdVolume, StoreVolume, TikvStoreVolumes};

/// A healthy 2-store cluster: store 1 on instance i-1 (vol-1, vol-2), store 2 on i-2 (vol-3), one PD volume.
fn view() -> ClusterView {
    let store_volume = |id: &str| StoreVolume {
        volume_id: id.into(),
        type_: "tikv".into(),
        mount_path: "/var/lib/tikv".into(),
        pvc: format!("pvc-{id}"),
        pv: format!("pv-{id}"),
    };
    let pd_store = |id: u64, pod: &str| Store {
        id,
        address: format!("{pod}.basic-tikv-peer.ns.svc:20160"),
        state_name: "Up".into(),
        version: "8.5.5".into(),
        labels: vec![],
    };
    let ec2 = |id: &str, instance: Option<&str>| VolumeInfo {
        volume_id: id.into(),
        availability_zone: "us-east-1a".into(),
        size_gib: 10,
        instance_id: instance.map(String::from),
    };
    ClusterView {
        namespace: "ns".into(),
        cluster: "basic".into(),
        pd_url: "http://basic-pd.ns:2379".into(),
        version: "v8.5.5".into(),
        stores: vec![pd_store(1, "basic-tikv-0"), pd_store(2, "basic-tikv-1")],
        min_resolved_ts: MinResolvedTs { ts: 100, is_real_time: true },
        volumes: ResolvedVolumes {
            tikv: vec![
                TikvStoreVolumes { store_id: 1, pod: "basic-tikv-0".into(), volumes: vec![store_volume("vol-1"), store_volume("vol-2")] },
                TikvStoreVolumes { store_id: 2, pod: "basic-tikv-1".into(), volumes: vec![store_volume("vol-3")] },
            ],
            pd: vec![PdVolume { pod: "basic-pd-0".into(), volume_id: "vol-pd".into(), pvc: "pvc-pd".into(), pv: "pv-pd".into() }],
            pvs: vec![],
            pvcs: vec![],
        },
        location: "s3://bucket/prefix".into(),
        bucket_error: None,
        meta_exists: false,
        described: vec![ec2("vol-1", Some("i-1")), ec2("vol-2", Some("i-1")), ec2("vol-3", Some("i-2")), ec2("vol-pd", Some("i-3"))],
        pending_snapshots: 0,
        attached: [
            ("i-1".to_string(), vec!["vol-root".into(), "vol-1".into(), "vol-2".into()]),
            ("i-2".to_string(), vec!["vol-3".into(), "vol-other".into()]),
        ]
        .into(),
    }
}

#[test]
fn a_healthy_cluster_is_planned_one_call_per_instance_excluding_other_volumes() {
    let plan = plan(view()).expect("plan");
    assert_eq!(plan.instances.len(), 2);
    assert_eq!(
        plan.instances[0],
        InstancePlan { instance_id: "i-1".into(), volume_ids: vec!["vol-1".into(), "vol-2".into()], exclude_volume_ids: vec!["vol-root".into()] }
    );
    assert_eq!(
        plan.instances[1],
        InstancePlan { instance_id: "i-2".into(), volume_ids: vec!["vol-3".into()], exclude_volume_ids: vec!["vol-other".into()] }
    );
    assert_eq!(plan.volume_az.keys().collect::<Vec<_>>(), ["vol-1", "vol-2", "vol-3"], "PD volumes are not snapshotted");
    assert_eq!(view().tikv_instances(), ["i-1".to_string(), "i-2".to_string()].into());
}

#[test]
fn each_rule_names_its_reason() {
    type Edit = fn(&mut ClusterView);
    let cases: &[(&str, Edit, Reason)] = &[
        ("old cluster", |v| v.version = "v6.1.0".into(), Reason::ClusterVersionTooOld),
        ("unreadable version", |v| v.version = "None".into(), Reason::ClusterVersionTooOld),
        ("tiflash store", |v| v.stores[1].labels = vec![("engine".into(), "tiflash".into())], Reason::TiFlashNotSupported),
        ("resolved ts off", |v| v.min_resolved_ts.is_real_time = false, Reason::MinResolvedTsNotEnabled),
        ("resolved ts unset", |v| v.min_resolved_ts.ts = u64::MAX, Reason::MinResolvedTsNotEnabled),
        ("pod labelled with an unknown store", |v| v.volumes.tikv[0].store_id = 9, Reason::StoreMismatch),
        ("store at another pod", |v| v.stores[0].address = "basic-tikv-7.basic-tikv-peer.ns.svc:20160".into(), Reason::StoreMismatch),
        ("tombstone store", |v| v.stores[0].state_name = "Tombstone".into(), Reason::StoreMismatch),
        ("store down", |v| v.stores[1].state_name = "Disconnected".into(), Reason::StoreNotUp),
        ("store without pod", |v| v.volumes.tikv.truncate(1), Reason::StoreMismatch),
        ("bucket unreachable", |v| v.bucket_error = Some("403".into()), Reason::BucketNotAccessible),
        ("backupmeta there", |v| v.meta_exists = true, Reason::FileExistedInExternalStorage),
        ("volume gone", |v| drop(v.described.remove(0)), Reason::VolumeNotFound),
        ("volume detached", |v| v.described[2].instance_id = None, Reason::VolumeNotAttached),
        ("volumes split", |v| v.described[1].instance_id = Some("i-9".into()), Reason::VolumesOnSeveralInstances),
        ("pd volume gone", |v| v.described.truncate(3), Reason::VolumeNotFound),
    ];
    for (case, edit, want) in cases {
        let mut v = view();
        edit(&mut v);
        assert_eq!(plan(v).map(|_| ()).map_err(|f| f.reason), Err(*want), "{case}");
    }
}

#[test]
fn a_store_of_another_cluster_is_not_ours_to_match() {
    let mut v = view();
    v.stores.push(Store {
        id: 7,
        address: "other-tikv-0.other-tikv-peer.ns.svc:20160".into(),
        state_name: "Up".into(),
        version: "8.5.5".into(),
        labels: vec![],
    });
    assert!(plan(v).is_ok());
}

#[test]
fn the_tidbcluster_object_alone_can_refuse() {
    let facts = |tikv: i64, tiflash: i64| ClusterFacts {
        tls_cluster: false,
        tikv_replicas: tikv,
        pd_replicas: 1,
        tidb_replicas: 1,
        tiflash_replicas: tiflash,
        tikv_storage_volumes: vec![],
        tikv_config: serde_json::Value::Null,
    };
    let reason = |f: Option<&ClusterFacts>| tidbcluster("ns", "basic", f).map_err(|f| f.reason);
    assert_eq!(reason(None), Err(Reason::TidbClusterNotFound));
    assert_eq!(reason(Some(&facts(3, 1))), Err(Reason::TiFlashNotSupported));
    assert_eq!(reason(Some(&facts(0, 0))), Err(Reason::NoTiKV));
    assert_eq!(reason(Some(&facts(3, 0))), Ok(()));
}

#[test]
fn the_pending_snapshot_quota_is_checked_before_anything_is_paused() {
    let plan = plan(view()).expect("plan");
    assert_eq!(room_for_snapshots(&plan, 0, 3), Room::Fits, "3 snapshots fit a limit of 3");
    assert!(matches!(room_for_snapshots(&plan, 1, 3), Room::Wait(m) if m.contains("1 pending + 3")));
    assert!(matches!(room_for_snapshots(&plan, 0, 2), Room::Never(f) if f.reason == Reason::SnapshotQuotaExceeded));
}
