//! TiKV's prepare: every store leased and every region applied before the resolved ts, the lease
//! finished right after the CreateSnapshots calls; an old TiKV gets PD's pause only (with a Warning), a
//! new one that cannot be prepared, or a region that never applies, fails the backup with nothing left
//! paused or prepared.

use serde_json::json;

use super::{assert_left_nothing, fails_with};
use crate::api::ConditionType;
use crate::reason::Reason;
use crate::testkit::world::is;
use crate::testkit::{Ec2Method, PdMethod, World};

#[tokio::test]
async fn every_store_is_prepared_before_the_resolved_ts_and_finished_right_after_the_snapshots() {
    let world = World::builder().stores(3).build();
    world.create_backup("b", json!({}));
    world.ec2.complete_after_describes(Some(1));
    world.run_until("b", is(ConditionType::Complete)).await.expect("the Backup stays");
    let tikv = &world.connectors.tikv;
    let log = tikv.log();
    for store in &world.cluster.tikv {
        let id = store.store_id;
        let mine: Vec<&String> = log.iter().filter(|l| l.starts_with(&format!("{id} "))).collect();
        assert_eq!(mine.first().map(|s| s.as_str()), Some(format!("{id} lease 30").as_str()), "{log:?}");
        assert!(mine.iter().any(|l| *l == &format!("{id} wait-apply 1")), "its region is waited on: {log:?}");
        assert!(mine.iter().any(|l| *l == &format!("{id} finish")), "and finished: {log:?}");
    }
    let last_wait_apply = *tikv.times_of("wait-apply").iter().max().unwrap();
    let resolved_ts = world.pd.calls_of(PdMethod::MinResolvedTs).last().expect("the resolved ts is read").at;
    assert!(last_wait_apply < resolved_ts, "every region applied before the resolved ts is read");
    let last_call = world.ec2.calls_of(Ec2Method::CreateSnapshots).iter().map(|c| c.at).max().unwrap();
    assert!(tikv.times_of("finish").iter().all(|at| *at > last_call), "finished after the last CreateSnapshots call");
    // Finish goes out together with PD's resume (neither matters to snapshots already taken).
    let first_undo = world.pd.calls_of(PdMethod::PauseScheduler).iter().find(|c| c.undoes()).expect("resumed").at;
    assert!(tikv.times_of("finish").iter().all(|at| *at > last_call && first_undo > last_call), "both after the last call");
    assert!(tikv.prepared().is_empty(), "no store is left prepared");
    let record = world.record("b").prepare.expect("the prepare is recorded");
    assert_eq!((record.stores, record.regions, record.unsupported), (3, 3, None));
    let events = world.events();
    assert!(events.iter().any(|(_, _, note)| note.contains("3 TiKV stores prepared, 3 regions applied in")), "an Event says so: {events:?}");
}

#[tokio::test]
async fn a_tikv_older_than_v7_6_without_the_prepare_stream_gets_pds_pause_only_with_a_warning() {
    let world = World::builder().stores(2).build();
    let old = world.cluster.tikv[0].store_id;
    world.pd.set_store_version(old, "7.1.2");
    world.connectors.tikv.make_unsupported(old);
    world.create_backup("b", json!({}));
    world.ec2.complete_after_describes(Some(1));
    world.run_until("b", is(ConditionType::Complete)).await.expect("the Backup stays");
    let warned = world.events().into_iter().find(|(_, reason, _)| reason == "TiKVPrepareUnsupported").expect("a Warning Event");
    assert_eq!(warned.0, "Warning");
    assert!(warned.2.contains(&format!("{old} v7.1.2")), "{warned:?}");
    assert!(world.record("b").prepare.unwrap().unsupported.is_some());
    assert!(world.connectors.tikv.prepared().is_empty(), "the other store was finished at once");
}

#[tokio::test]
async fn a_tikv_from_v7_6_that_cannot_be_prepared_fails_the_backup_before_any_snapshot() {
    let world = World::builder().stores(2).build();
    world.connectors.tikv.make_unsupported(world.cluster.tikv[1].store_id);
    fails_with(&world, "b", json!({"cleanPolicy": "Delete"}), Reason::TiKVPrepareFailed).await;
    assert!(world.ec2.calls_of(Ec2Method::CreateSnapshots).is_empty(), "no snapshot of an unprepared cluster");
    assert_left_nothing(&world, "b");
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !world.connectors.tikv.prepared().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the store that was prepared is finished");
}

#[tokio::test]
async fn a_region_that_never_applies_fails_the_backup_within_the_limit_with_nothing_paused() {
    let world = World::builder().stores(2).build();
    world.connectors.tikv.never_apply(world.cluster.tikv[0].store_id);
    let started = std::time::Instant::now();
    let failed = fails_with(&world, "b", json!({"cleanPolicy": "Delete"}), Reason::WaitApplyTimeout).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "within the limit (1s here)");
    let message = failed.status.unwrap().conditions.into_iter().find(|c| c.type_ == ConditionType::Failed).unwrap().message.unwrap();
    assert!(message.contains("region"), "{message}");
    assert!(world.ec2.calls_of(Ec2Method::CreateSnapshots).is_empty());
    assert_left_nothing(&world, "b");
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !world.connectors.tikv.prepared().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both stores are finished");
}
