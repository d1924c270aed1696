//! Reconcile-level tests of each step, on the in-memory fakes of `crate::testkit`: a `World` drives
//! `reconcile` as the controller would, and each test asserts what the step left in PD, EC2, S3 and on
//! the Backup (reason, conditions, record, Events). One file per step, plus the crash-point matrix.
//! None needs a stack; each runs in about a second or less.

mod cleanup;
mod complete;
#[cfg(feature = "failpoints")]
mod crash_matrix;
mod failure;
mod pause;
mod preflight;
mod prepare;
mod resume;
mod snapshot;
mod write_meta;

use k8s_openapi::api::coordination::v1::Lease;
use serde_json::json;

use crate::api::{Backup, ConditionType};
use crate::reason::Reason;
use crate::testkit::Ec2Method;
use crate::testkit::world::{BUCKET, World, failure_reason, is};

/// The service GC safepoint a backup holds while paused.
fn safepoint_id(uid: &str) -> String {
    format!("tidb-ebs-backup-{uid}")
}

/// A Backup with spec `extra` (merged in) driven until `Failed`, which must carry `reason`.
async fn fails_with(world: &World, name: &str, extra: serde_json::Value, reason: Reason) -> Backup {
    world.create_backup(name, extra);
    let failed = world.run_until(name, is(ConditionType::Failed)).await.expect("the Backup stays");
    assert_eq!(failure_reason(&failed).as_deref(), Some(reason.as_str()), "{:#?}", failed.status);
    failed
}

/// A backup refused before anything was touched: PD was never asked to pause, no CreateSnapshots went
/// out, no lock of its own is at its prefix (its name), and the cluster claim is given back.
fn assert_touched_nothing(world: &World, name: &str) {
    let pauses: Vec<_> = world.pd.calls().into_iter().filter(|c| c.pauses()).collect();
    assert!(pauses.is_empty(), "PD was never paused: {pauses:?}");
    assert!(world.ec2.calls_of(Ec2Method::CreateSnapshots).is_empty(), "no CreateSnapshots");
    assert!(world.ec2.snapshots().is_empty(), "no snapshot: {:?}", world.ec2.snapshots());
    let lock = world.s3.object(BUCKET, &format!("{name}/{}", crate::backup::ownership::LOCK_FILE)).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&lock).contains(&world.uid(name)), "no prefix lock of its own");
    assert_claim_released(world);
}

fn assert_claim_released(world: &World) {
    assert!(world.api.all::<Lease>().is_empty(), "the cluster claim is given back");
}

/// A backup past its pause has undone it (not left it to the TTL: the tests end long before it),
/// holds no safepoint, and its keeper has stopped.
fn assert_resumed(world: &World, uid: &str) {
    assert!(!world.pd.is_paused(), "paused schedulers {:?}", world.pd.paused_scheduler_names());
    assert_eq!(world.pd.safepoint(&safepoint_id(uid)), None, "the service safepoint is removed");
    assert!(world.ctx().keepers.guard(uid).is_none(), "the pause keeper has stopped");
}

/// A failed backup left nothing: PD resumed, no snapshot tagged with it, nothing at its prefix.
fn assert_left_nothing(world: &World, name: &str) {
    let uid = world.uid(name);
    assert_resumed(world, &uid);
    assert_claim_released(world);
    assert!(world.snapshots_per_volume(&uid).is_empty(), "no snapshot of the backup left: {:?}", world.ec2.snapshots());
    assert!(world.keys_under(name).is_empty(), "no backupmeta or lock left: {:?}", world.keys_under(name));
}

/// A completed backup's `backupmeta` (at the prefix of its name) lists exactly the snapshots it
/// recorded: one per TiKV volume, each tagged with its uid.
fn assert_consistent(world: &World, name: &str) {
    assert_consistent_at(world, name, name);
}

fn assert_consistent_at(world: &World, name: &str, prefix: &str) {
    let uid = world.uid(name);
    let recorded = world.record(name).snapshots;
    assert_eq!(world.snapshots_in_meta(prefix), recorded, "backupmeta lists the recorded snapshots");
    let mut volumes = world.cluster.tikv_volume_ids();
    volumes.sort();
    assert_eq!(recorded.keys().cloned().collect::<Vec<_>>(), volumes, "every TiKV volume");
    let per_volume = world.snapshots_per_volume(&uid);
    assert!(per_volume.len() == volumes.len() && per_volume.values().all(|n| *n == 1), "one snapshot per volume: {per_volume:?}");
}

/// The PD calls that paused (TTL > 0) or undid (TTL 0) scheduling or GC, as (instant, pauses).
fn pause_calls(world: &World) -> Vec<(std::time::Instant, bool)> {
    world.pd.calls().into_iter().filter(|c| c.ttl_seconds.is_some()).map(|c| (c.at, c.pauses())).collect()
}

/// An access-key Secret and a Delete backup using it: the spec most tests start from.
fn with_secret(world: &World, extra: serde_json::Value) -> serde_json::Value {
    world.seed_s3_secret("s3-secret");
    let mut spec = json!({"s3": {"secretName": "s3-secret"}});
    crate::testkit::apiserver::merge_patch(&mut spec, &extra);
    spec
}

/// The object at `key` in the test bucket.
fn object(world: &World, key: &str) -> Option<Vec<u8>> {
    world.s3.object(BUCKET, key)
}
