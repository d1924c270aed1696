//! Writing `backupmeta` after PD is resumed: an S3 problem is ridden out (the snapshots are consistent
//! and must not be thrown away for a blip), up to `transient_limit`, then the backup fails cleanly.

use std::time::Duration;

use serde_json::json;

use super::{assert_consistent, assert_left_nothing, assert_resumed};
use crate::api::ConditionType;
use crate::reason::Reason;
use crate::testkit::S3Method;
use crate::testkit::world::{Pass, failure_reason, is};
use crate::testkit::{AwsFault, Times, World};

#[tokio::test]
async fn a_transient_s3_failure_is_ridden_out_then_the_backupmeta_is_written() {
    let world = World::builder().build();
    world.s3.fail_where(S3Method::PutIfAbsent, "b/backupmeta", Times::Next(1), AwsFault::Unreachable);
    world.create_backup("b", json!({"cleanPolicy": "Delete"}));
    let pass = world.reconcile("b").await;
    assert!(matches!(pass, Pass::Requeue(after) if after <= Duration::from_secs(2)), "retried soon: {pass:?}");
    let record = world.record("b");
    let transient = record.transient.as_ref().expect("the problem is recorded with when it began");
    assert_eq!(transient.reason, Reason::BackupMetaWriteFailed);
    assert!(record.resumed && !record.meta_written, "PD is resumed first; the backupmeta is still to write");
    assert_resumed(&world, &world.uid("b"));
    assert!(world.s3.object(crate::testkit::world::BUCKET, "b/backupmeta").is_none());

    world.ec2.complete_after_describes(Some(1));
    world.run_until("b", is(ConditionType::Complete)).await;
    assert_consistent(&world, "b");
    assert_eq!(world.record("b").transient, None, "cleared once it worked");
}

#[tokio::test]
async fn s3_down_for_longer_than_the_limit_fails_the_backup_and_deletes_its_snapshots() {
    let world = World::builder().settings(|s| s.transient_limit = Duration::ZERO).build();
    world.s3.fail_where(S3Method::PutIfAbsent, "b/backupmeta", Times::Always, AwsFault::Unreachable);
    world.create_backup("b", json!({"cleanPolicy": "Retain"}));
    let failed = world.run_until("b", is(ConditionType::Failed)).await.unwrap();
    assert_eq!(failure_reason(&failed).as_deref(), Some(Reason::BackupMetaWriteFailed.as_str()));
    let message = crate::testkit::world::condition(&failed, ConditionType::Failed).unwrap().message.unwrap();
    assert!(message.contains("longer than the 0s the operator rides out"), "{message}");
    assert_left_nothing(&world, "b");
}

#[tokio::test]
async fn a_tidbcluster_gone_before_the_backupmeta_fails_the_backup() {
    let world = World::builder().build();
    world.s3.fail_where(S3Method::PutIfAbsent, "b/backupmeta", Times::Next(1), AwsFault::Unreachable);
    world.create_backup("b", json!({}));
    assert!(matches!(world.reconcile("b").await, Pass::Requeue(_)));
    world.api.remove_dynamic(&crate::api::tidbcluster::tidbcluster_resource(), Some(&world.cluster.namespace), &world.cluster.name);
    let failed = world.run_until("b", is(ConditionType::Failed)).await.unwrap();
    assert_eq!(failure_reason(&failed).as_deref(), Some(Reason::TidbClusterNotFound.as_str()));
    assert_left_nothing(&world, "b");
}
