//! Deleting a Backup: its data is kept or deleted as `cleanPolicy` says, with the operator's identity
//! when the Backup's own is gone, and a clean-up that cannot finish can be let go by annotation.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use serde_json::json;

use super::{assert_resumed, with_secret};
use crate::api::{BACKUP_PROTECTION_FINALIZER, ConditionType};
use crate::backup::cleanup::FORCE_RELEASE_ANNOTATION;
use crate::reason::Reason;
use crate::testkit::world::{Pass, condition, is};
use crate::testkit::{Times, World};

/// A completed backup `b` with `spec`, then deleted by its user, run until it is gone.
async fn completed_then_deleted(world: &World, spec: serde_json::Value) -> String {
    let mut spec = spec;
    spec["cleanOption"] = json!({"snapshotsDeleteRatio": 100.0});
    world.create_backup("b", spec);
    world.ec2.complete_after_describes(Some(1));
    world.run_until("b", is(ConditionType::Complete)).await;
    let uid = world.uid("b");
    world.delete_backup("b").await;
    assert!(world.run_until("b", |b| b.is_none()).await.is_none());
    uid
}

fn cleaning_event(world: &World) -> bool {
    world.events().iter().any(|(_, reason, _)| reason == Reason::Cleaning.as_str())
}

#[tokio::test]
async fn delete_deletes_the_snapshots_the_backupmeta_and_the_lock() {
    let world = World::builder().stores(2).build();
    let uid = completed_then_deleted(&world, json!({"cleanPolicy": "Delete"})).await;
    assert!(world.snapshots_per_volume(&uid).is_empty(), "{:?}", world.ec2.snapshots());
    assert!(world.keys_under("b").is_empty(), "{:?}", world.keys_under("b"));
    assert!(cleaning_event(&world), "{:?}", world.events());
}

#[tokio::test]
async fn the_end_of_a_clean_up_is_announced_by_an_event() {
    let world = World::builder().stores(2).build();
    completed_then_deleted(&world, json!({"cleanPolicy": "Delete"})).await;
    let reasons: Vec<String> = world.events().into_iter().map(|(_, reason, _)| reason).collect();
    assert!(reasons.contains(&Reason::Cleaned.as_str().to_string()), "the Backup is gone; its Events say how it ended: {reasons:?}");
}

#[tokio::test]
async fn retain_keeps_everything() {
    let world = World::builder().stores(2).build();
    let uid = completed_then_deleted(&world, json!({"cleanPolicy": "Retain"})).await;
    assert_eq!(world.snapshots_per_volume(&uid).len(), 2, "both snapshots kept");
    assert_eq!(world.keys_under("b").len(), 2, "backupmeta and lock kept: {:?}", world.keys_under("b"));
    assert!(world.ec2.calls_of(crate::testkit::Ec2Method::DeleteSnapshot).is_empty());
}

#[tokio::test]
async fn on_failure_keeps_a_completed_backup() {
    let world = World::builder().stores(2).build();
    world.create_backup("b", json!({"cleanPolicy": "OnFailure"}));
    world.ec2.complete_after_describes(Some(1));
    let done = world.run_until("b", is(ConditionType::Complete)).await.unwrap();
    assert!(!done.metadata.finalizers.unwrap_or_default().contains(&BACKUP_PROTECTION_FINALIZER.to_string()), "let go once complete");
    let uid = world.uid("b");
    world.delete_backup("b").await;
    assert!(world.backup("b").is_none(), "no finalizer holds it");
    assert_eq!(world.snapshots_per_volume(&uid).len(), 2);
    assert_eq!(world.keys_under("b").len(), 2);
}

#[tokio::test]
async fn on_failure_deletes_a_backup_deleted_before_it_completed() {
    let world = World::builder().stores(2).build();
    world.create_backup("b", json!({"cleanPolicy": "OnFailure", "cleanOption": {"snapshotsDeleteRatio": 100.0}}));
    world.run_until("b", is(ConditionType::VolumeBackupSnapshotsCreated)).await;
    let uid = world.uid("b");
    world.delete_backup("b").await;
    world.run_until("b", |b| b.is_none()).await;
    assert!(world.snapshots_per_volume(&uid).is_empty(), "pending snapshots deleted");
    assert!(world.keys_under("b").is_empty());
    assert_resumed(&world, &uid);
}

#[tokio::test]
async fn a_deleted_backup_with_nothing_made_is_let_go_at_once() {
    let world = World::builder().build();
    world.create_backup("b", json!({"cleanPolicy": "Delete", "br": {"cluster": "nope"}}));
    world.run_until("b", is(ConditionType::Failed)).await;
    world.delete_backup("b").await;
    world.run_until("b", |b| b.is_none()).await;
    let reasons: Vec<String> = world.events().into_iter().map(|(_, reason, _)| reason).collect();
    assert!(reasons.contains(&Reason::NothingToClean.as_str().to_string()), "{reasons:?}");
    assert!(world.connectors.identities().is_empty(), "AWS is not even reached");
}

#[tokio::test]
async fn without_its_secret_the_backup_is_cleaned_up_with_the_operators_identity() {
    let world = World::builder().stores(2).build();
    let spec = with_secret(&world, json!({"cleanPolicy": "Delete", "cleanOption": {"snapshotsDeleteRatio": 100.0}}));
    world.create_backup("b", spec);
    world.ec2.complete_after_describes(Some(1));
    world.run_until("b", is(ConditionType::Complete)).await;
    let uid = world.uid("b");
    assert!(world.api.remove::<Secret>(Some("tidb"), "s3-secret"), "the namespace is being emptied");
    world.delete_backup("b").await;
    world.run_until("b", |b| b.is_none()).await;
    assert_eq!(world.connectors.identities().last().map(String::as_str), Some("the operator's own AWS identity"));
    assert!(world.snapshots_per_volume(&uid).is_empty() && world.keys_under("b").is_empty());
}

#[tokio::test]
async fn a_clean_up_no_identity_can_do_is_retried_until_released_by_annotation() {
    let world = World::builder().stores(2).build();
    world.create_backup("b", json!({"cleanPolicy": "Delete"}));
    world.ec2.complete_after_describes(Some(1));
    world.run_until("b", is(ConditionType::Complete)).await;
    let uid = world.uid("b");
    // Two passes, each trying the Backup's identity and then the operator's.
    world.connectors.fail_credentials(Times::Next(4));
    world.delete_backup("b").await;
    let pass = world.reconcile("b").await;
    assert!(matches!(pass, Pass::Requeue(after) if after == Duration::from_secs(15)), "retried: {pass:?}");
    let held = world.backup("b").expect("held by its finalizer");
    let failed = condition(&held, ConditionType::CleanFailed).expect("CleanFailed");
    assert_eq!(failed.reason.as_deref(), Some(Reason::CleanCredentialsFailed.as_str()));
    assert!(failed.message.unwrap().contains(FORCE_RELEASE_ANNOTATION), "the way out is named");

    world.annotate("b", FORCE_RELEASE_ANNOTATION, "true").await;
    world.run_until("b", |b| b.is_none()).await;
    assert!(world.warnings().contains(&Reason::ReleasedWithoutCleanup.as_str().to_string()), "{:?}", world.events());
    assert_eq!(world.snapshots_per_volume(&uid).len(), 2, "the data is left, as the annotation asks");
}

#[tokio::test]
async fn a_retain_backup_deleted_mid_pause_resumes_pd_at_once_and_its_snapshots_are_reported_orphans() {
    let world = World::builder().stores(2).settings(|s| s.pause_ttl = Duration::from_secs(6)).build();
    world
        .ec2
        .fail(crate::testkit::Ec2Method::CreateSnapshots, Times::Always, crate::testkit::AwsFault::Delay(Duration::from_millis(300)));
    world.create_backup("b", json!({"cleanPolicy": "Retain"}));
    let uid = world.uid("b");
    let deleted_mid_pause = async {
        while world.ec2.calls_of(crate::testkit::Ec2Method::CreateSnapshots).len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(world.pd.is_paused());
        world.delete_backup("b").await;
        assert!(world.backup("b").is_none(), "no finalizer holds a Retain backup");
        world.sync_cache(); // the controller's watch sees it go
        std::time::Instant::now()
    };
    let (pass, deleted_at) = tokio::join!(world.reconcile("b"), deleted_mid_pause);
    assert!(matches!(pass, Pass::Failed { .. } | Pass::Gone), "{pass:?}");
    while world.pd.is_paused() && deleted_at.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!world.pd.is_paused(), "the keeper resumed PD within {:?} of the deletion", deleted_at.elapsed());
    assert_eq!(world.pd.safepoint(&super::safepoint_id(&uid)), None);
    let ctx = world.ctx();
    let orphans = crate::backup::orphans::scan(&ctx.client, ctx.connectors.as_ref(), &ctx.backups).await.expect("a scan");
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!((orphans[0].uid.as_str(), orphans[0].snapshots.len()), (uid.as_str(), 2), "the in-flight snapshots are reported");
}
