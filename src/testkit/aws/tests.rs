use super::*;
use crate::aws::{MetaStore, SnapshotState, Snapshots, VolumeInfo};

fn ec2_with_one_instance() -> (FakeSnapshots, String) {
    let ec2 = FakeSnapshots::new();
    let root = ec2.add_instance("i-1", "us-west-2a");
    for (id, instance) in [("vol-a", Some("i-1")), ("vol-b", Some("i-1")), ("vol-foreign", Some("i-1")), ("vol-loose", None)] {
        let info = VolumeInfo { volume_id: id.into(), availability_zone: "us-west-2a".into(), size_gib: 10, instance_id: instance.map(String::from) };
        ec2.add_volume(info, &[("Name", id)]);
    }
    (ec2, root)
}

fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn create_snapshots_takes_attached_data_volumes_but_the_excluded_and_tags_them() {
    let (ec2, root) = ec2_with_one_instance();
    let mut attached = ec2.instance_volumes("i-1").await.unwrap();
    attached.sort();
    assert_eq!(attached, vec!["vol-a", "vol-b", "vol-foreign"], "not the root volume {root}");
    let created = ec2.create_snapshots("i-1", &["vol-foreign".into()], &tags(&[("backup", "uid-1")])).await.unwrap();
    assert_eq!(created.iter().map(|c| c.volume_id.as_str()).collect::<Vec<_>>(), vec!["vol-a", "vol-b"]);
    assert!(created.iter().all(|c| c.snapshot_id.starts_with("snap-")));
    let found = ec2.find_snapshots_by_tag("backup", "uid-1").await.unwrap();
    assert_eq!(found.len(), 2);
    assert!(found[0].tags.contains(&("Name".into(), "vol-a".into())), "volume tags are copied");
    assert_eq!(ec2.find_snapshots_with_tag_key("backup").await.unwrap().len(), 2);
    let e = ec2.create_snapshots("i-nope", &[], &[]).await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidInstanceID.NotFound"));
    let e = ec2.describe_volumes(&["vol-a".into(), "vol-nope".into()]).await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidVolume.NotFound"), "as EC2, one unknown id fails the call");
    assert_eq!(ec2.describe_volumes(&["vol-loose".into()]).await.unwrap()[0].instance_id, None);
}

#[tokio::test]
async fn snapshots_stay_pending_until_completed_and_sizes_follow_written_bytes() {
    let (ec2, _) = ec2_with_one_instance();
    let earlier = ec2.add_completed_snapshot("vol-a", &[("backup", "old")]);
    ec2.set_written_bytes("vol-a", 5 << 30);
    let created = ec2.create_snapshots("i-1", &["vol-b".into(), "vol-foreign".into()], &[]).await.unwrap();
    let id = created[0].snapshot_id.clone();
    assert_eq!(ec2.describe_snapshots(std::slice::from_ref(&id)).await.unwrap()[0].state, SnapshotState::Pending);
    ec2.complete_after_describes(Some(2));
    let first = ec2.describe_snapshots(&[id.clone(), "snap-gone".into()]).await.unwrap();
    assert_eq!((first.len(), first[0].state, first[0].progress), (1, SnapshotState::Pending, 50.0), "unknown ids are left out");
    assert_eq!(ec2.describe_snapshots(std::slice::from_ref(&id)).await.unwrap()[0].state, SnapshotState::Completed);
    let history = ec2.completed_snapshots_of_volume("vol-a").await.unwrap();
    assert_eq!(history.iter().map(|s| s.snapshot_id.clone()).collect::<Vec<_>>(), vec![earlier.clone(), id.clone()], "oldest first");
    assert_eq!(ec2.snapshot_block_bytes(&id).await.unwrap(), 5 << 30);
    assert_eq!(ec2.changed_block_bytes(&earlier, &id).await.unwrap(), 4 << 30);
    ec2.break_snapshot(&earlier, "disk on fire");
    assert_eq!(ec2.snapshots()[0].state, SnapshotState::Error);
    ec2.delete_snapshot(&id).await.unwrap();
    ec2.delete_snapshot(&id).await.unwrap();
    assert_eq!(ec2.snapshots().len(), 1, "deleting a missing snapshot is no error");
    ec2.complete_all();
    assert!(ec2.snapshot_block_bytes(&id).await.is_err());
}

#[tokio::test]
async fn faults_throttle_fail_or_lose_the_answer_after_the_call_took_effect() {
    let (ec2, _) = ec2_with_one_instance();
    ec2.fail(Ec2Method::CreateSnapshots, Times::Next(1), AwsFault::code("SnapshotCreationPerVolumeRateExceeded"));
    assert!(ec2.create_snapshots("i-1", &[], &[]).await.unwrap_err().is_throttle());
    ec2.fail(Ec2Method::CreateSnapshots, Times::Next(1), AwsFault::code("InternalError"));
    let e = ec2.create_snapshots("i-1", &[], &[]).await.unwrap_err();
    assert!(e.is_ambiguous() && !e.is_throttle(), "{e}");
    assert!(ec2.snapshots().is_empty(), "nothing was done");
    ec2.fail(Ec2Method::CreateSnapshots, Times::Next(1), AwsFault::Ambiguous);
    assert!(ec2.create_snapshots("i-1", &[], &[]).await.unwrap_err().is_ambiguous());
    assert_eq!(ec2.snapshots().len(), 3, "the call took effect although it failed");
    ec2.fail(Ec2Method::DeleteSnapshot, Times::Always, AwsFault::Unreachable);
    assert!(ec2.delete_snapshot("snap-x").await.unwrap_err().is_ambiguous());
    ec2.clear_faults();
    ec2.fail(Ec2Method::DescribeVolumes, Times::Next(1), AwsFault::Delay(std::time::Duration::from_millis(10)));
    ec2.describe_volumes(&[]).await.unwrap();
    assert_eq!(ec2.calls_of(Ec2Method::CreateSnapshots).len(), 3);
    assert_eq!(ec2.calls_of(Ec2Method::CreateSnapshots)[0].detail, "i-1 excluding []");
    assert_eq!(ec2.calls().len(), 5);
}

#[tokio::test]
async fn the_meta_store_writes_under_its_prefix_once_and_knows_missing_buckets() {
    let s3 = FakeS3::new();
    let store: FakeMetaStore = s3.store("bucket", "/backups/b1/");
    assert_eq!(store.check_bucket().await.unwrap_err().code(), Some("NoSuchBucket"));
    s3.add_bucket("bucket");
    store.check_bucket().await.unwrap();
    assert_eq!(store.location(), "s3://bucket/backups/b1");
    assert!(store.put_if_absent("backupmeta", b"one".to_vec()).await.unwrap());
    assert!(!store.put_if_absent("backupmeta", b"two".to_vec()).await.unwrap());
    assert_eq!(store.get("backupmeta").await.unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(s3.object("bucket", "backups/b1/backupmeta").as_deref(), Some(&b"one"[..]));
    assert_eq!(s3.keys("bucket"), vec!["backups/b1/backupmeta"]);
    s3.fail(S3Method::PutIfAbsent, Times::Next(1), AwsFault::Ambiguous);
    assert!(store.put_if_absent("lock", b"l".to_vec()).await.unwrap_err().is_ambiguous());
    assert!(store.exists("lock").await.unwrap(), "the write landed");
    store.delete("lock").await.unwrap();
    assert!(!store.exists("lock").await.unwrap());
    s3.put_object("bucket", "backups/b1/other", vec![]);
    assert_eq!(s3.store("bucket", "").location(), "s3://bucket");
    assert!(s3.calls().iter().any(|c| c.method == S3Method::Delete && c.detail == "bucket/backups/b1/lock"));
}
