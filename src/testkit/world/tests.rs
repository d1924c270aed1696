//! Whole backups on the fakes: the proof that `reconcile` runs end to end without a stack.

use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;

use super::*;
use crate::api::{BACKUP_PROTECTION_FINALIZER, ConditionType};
use crate::aws::SnapshotState;
use crate::testkit::{ApiFault, AwsFault, Ec2Method, PdFault, PdMethod, Times, Verb};

#[test]
fn requeues_are_read_from_actions() {
    for duration in [Duration::from_secs(5), Duration::from_millis(50), Duration::from_millis(1500), Duration::from_micros(7)] {
        assert_eq!(requeue_after(&Action::requeue(duration)), Some(duration));
    }
    assert_eq!(requeue_after(&Action::await_change()), None);
}

#[tokio::test]
async fn a_backup_completes_with_one_snapshot_per_volume_and_its_deletion_cleans_up() {
    let started = Instant::now();
    let world = World::builder().stores(3).volumes_per_store(2).build();
    world.seed_s3_secret("s3-secret");
    let extra = json!({"cleanPolicy": "Delete", "cleanOption": {"snapshotsDeleteRatio": 100.0}, "s3": {"secretName": "s3-secret"}});
    world.create_backup("b1", extra);

    let created = world.run_until("b1", is(ConditionType::VolumeBackupSnapshotsCreated)).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    assert!(!world.pd.is_paused(), "PD is resumed once the snapshots are started");
    assert_eq!(world.pd.safepoint(&format!("tidb-ebs-backup-{uid}")), None);
    assert!(!world.pd.calls_of(PdMethod::PauseScheduler).is_empty());
    let taken = world.snapshots_taken();
    let mut expected = world.cluster.tikv_volume_ids();
    expected.sort();
    assert_eq!(taken.keys().cloned().collect::<Vec<_>>(), expected, "every TiKV volume, no foreign, root or PD one");
    let calls: Vec<String> = world.ec2.calls_of(Ec2Method::CreateSnapshots).into_iter().map(|c| c.detail).collect();
    let members: &[TikvMember] = &world.cluster.tikv;
    for member in members {
        let call = format!("{} excluding [{}]", member.instance_id, member.foreign_volume_id);
        assert_eq!(calls.iter().filter(|c| **c == call).count(), 1, "one call per instance, the foreign volume left out: {calls:?}");
    }
    assert!(world.ec2.snapshots().iter().all(|s| s.state == SnapshotState::Pending));
    assert_eq!(world.snapshots_in_meta("b1"), taken);

    world.ec2.complete_all();
    let done = world.run_until("b1", is(ConditionType::Complete)).await.unwrap();
    let status = done.status.clone().unwrap();
    assert_eq!(status.backup_size, Some(6 << 30), "six volumes with 1 GiB written each");
    assert!(status.commit_ts.is_some() && status.time_completed.is_some());
    assert!(done.metadata.finalizers.unwrap_or_default().contains(&BACKUP_PROTECTION_FINALIZER.to_string()));
    assert!(world.api.all::<Lease>().is_empty(), "the cluster claim is released");
    assert_eq!(world.connectors.identities()[0], "an access key from spec.s3.secretName");
    assert!(world.connectors.pd_urls().iter().all(|u| u == "http://basic-pd.tidb:2379"));
    let reasons: Vec<String> = world.api.all::<Event>().into_iter().filter_map(|e| e.reason).collect();
    assert!(reasons.contains(&"Complete".to_string()), "{reasons:?}");

    // The Backup's own credentials fail at clean-up: the operator's identity is used instead.
    world.connectors.fail_credentials(Times::Next(1));
    world.delete_backup("b1").await;
    assert!(world.backup("b1").unwrap().metadata.deletion_timestamp.is_some(), "held by its finalizer");
    assert!(world.run_until("b1", |b| b.is_none()).await.is_none());
    assert!(world.ec2.snapshots().is_empty(), "cleanPolicy Delete deletes the snapshots");
    assert!(world.s3.keys(BUCKET).is_empty(), "and the backupmeta and prefix lock");
    assert_eq!(world.connectors.identities().last().map(String::as_str), Some("the operator's own AWS identity"));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn the_projects_crd_with_a_status_subresource_and_an_irsa_identity() {
    let world = World::builder().backup_status_subresource(true).build();
    world.seed_service_account("backup-sa", "arn:aws:iam::123456789012:role/backup");
    world.ec2.complete_after_describes(Some(2));
    world.create_backup("b2", json!({"serviceAccount": "backup-sa"}));
    let done = world.run_until("b2", is(ConditionType::Complete)).await.unwrap();
    assert!(done.metadata.finalizers.unwrap_or_default().is_empty(), "cleanPolicy Retain needs no finalizer");
    assert!(!world.api.requests_matching(Verb::Patch, "/backups/b2/status$").is_empty(), "status went through /status");
    assert!(!world.api.requests_matching(Verb::Create, "/serviceaccounts/backup-sa/token$").is_empty());
    assert!(world.connectors.identities().iter().all(|i| i.contains("(IRSA web identity)")));
    assert_eq!(world.snapshots_in_meta("b2"), world.snapshots_taken());
}

#[tokio::test]
async fn lost_answers_conflicts_and_a_restart_neither_repeat_nor_lose_a_snapshot() {
    let world = World::builder().build();
    world.create_backup("b3", json!({}));
    // One CreateSnapshots call takes effect, but its answer is lost.
    world.ec2.fail(Ec2Method::CreateSnapshots, Times::Next(1), AwsFault::Ambiguous);
    // A write of the Backup meets a conflict (the writer reads it again and re-applies its change).
    world.api.fail(Verb::Patch, "/backups/b3$", Times::Next(1), ApiFault::Status(409));
    world.run_until("b3", is(ConditionType::VolumeBackupSnapshotsCreated)).await;
    assert_eq!(world.ec2.calls_of(Ec2Method::CreateSnapshots).len(), 3, "the lost one is found by tag, not sent again");
    assert_eq!(world.api.requests_matching(Verb::Patch, "/backups/b3$")[0].code, Some(409));
    world.restart();
    world.ec2.complete_all();
    world.run_until("b3", is(ConditionType::Complete)).await;
    let taken = world.snapshots_taken();
    assert_eq!(taken.len(), world.cluster.tikv_volume_ids().len());
    assert_eq!(world.snapshots_in_meta("b3"), taken);
    assert!(!world.pd.is_paused());
}

#[tokio::test]
async fn a_failed_pause_resumes_pd_and_leaves_nothing_behind() {
    let world = World::builder().build();
    world.create_backup("b4", json!({"cleanPolicy": "OnFailure"}));
    world.pd.fail(PdMethod::UpdateServiceSafepoint, Times::Next(1), PdFault::Status(500));
    let failed = world.run_until("b4", is(ConditionType::Failed)).await.unwrap();
    let condition = failed.status.unwrap().conditions.into_iter().find(|c| c.type_ == ConditionType::Failed).unwrap();
    assert_eq!(condition.reason.as_deref(), Some("PDRequestFailed"), "{condition:?}");
    assert!(!world.pd.is_paused(), "paused schedulers: {:?}", world.pd.paused_scheduler_names());
    assert!(world.ec2.snapshots().is_empty());
    assert!(world.s3.keys(BUCKET).is_empty(), "the prefix lock is given back");
}

#[tokio::test]
async fn operators_that_never_drain_fail_the_backup_before_any_snapshot() {
    let world = World::builder().settings(|s| s.quiet_wait = Duration::from_millis(100)).build();
    world.pd.set_operators(&["transfer leader of region 7"]);
    world.create_backup("b5", json!({}));
    let failed = world.run_until("b5", is(ConditionType::Failed)).await.unwrap();
    let reasons: Vec<_> = failed.status.unwrap().conditions.into_iter().filter_map(|c| c.reason).collect();
    assert!(reasons.contains(&"ScheduleNotQuiet".to_string()), "{reasons:?}");
    assert!(!world.pd.is_paused());
    assert!(world.ec2.calls_of(Ec2Method::CreateSnapshots).is_empty());
}
