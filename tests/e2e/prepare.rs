//! TiKV's prepare on the stack, as the PD emulator's TiKV side sees it (`/tikv/prepare-events`): every
//! store leased and every region waited on before the resolved ts, a lagging region waited for, the lease
//! finished right after the CreateSnapshots calls and on failure and deletion, splits refused while
//! prepared; an old TiKV gets PD's pause only with a Warning; a region that never applies fails the backup
//! within the limit with nothing paused or prepared; a store whose stream breaks fails the backup and is left to
//! its lease.

use std::time::Duration;

use serde_json::{Value, json};
use tidb_ebs_backup::api::ConditionType;

use crate::support::e2e::{Operator, Scene, assert_completed, settings, settled_pd_state};
use crate::support::{eventually, exclusive, http};

async fn control(scene: &Scene, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{path}", scene.stack.fake_tikv_control);
    let mut request = http().request(method, &url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The prepare events of this scene's stores, in order.
async fn events(scene: &Scene) -> Vec<Value> {
    let ids: Vec<u64> = scene.cluster.tikv.iter().map(|s| s.store_id).collect();
    let (_, all) = control(scene, reqwest::Method::GET, "/tikv/prepare-events", None).await;
    all.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["store"].as_u64().is_some_and(|s| ids.contains(&s)))
        .collect()
}

async fn prepared_stores(scene: &Scene) -> Vec<u64> {
    let ids: Vec<u64> = scene.cluster.tikv.iter().map(|s| s.store_id).collect();
    scene.stack.prepared_stores(&ids).await
}

/// This scene's regions (led by its stores), from PD.
async fn regions(scene: &Scene) -> Vec<tidb_ebs_backup::pd::Region> {
    use tidb_ebs_backup::pd::Pd;
    let ids: Vec<u64> = scene.cluster.tikv.iter().map(|s| s.store_id).collect();
    let all = scene.stack.pd_client().regions().await.expect("PD regions");
    all.into_iter().filter(|r| r.leader_store.is_some_and(|l| ids.contains(&l))).collect()
}

fn at(event: &Value) -> u64 {
    event["at_ms"].as_u64().unwrap_or(0)
}

/// A scene with the backup's access-key Secret; `None` (the test is skipped) beside a real pd-server,
/// whose fake-tikv does not serve the prepare stream (the PD emulator does).
async fn scene(prefix: &str, stores: usize) -> Option<Scene> {
    let env = std::env::var("HARNESS_ENV").ok().and_then(|path| std::fs::read_to_string(path).ok()).unwrap_or_default();
    if !env.lines().any(|line| line.trim() == "PD_IMPL=emulator") {
        eprintln!("skipped: the real pd-server's fake-tikv does not serve PrepareSnapshotBackup");
        return None;
    }
    let scene = Scene::new(prefix, stores, 1).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    Some(scene)
}

async fn events_about(scene: &Scene, name: &str) -> Vec<String> {
    use kube::api::{Api, ListParams};
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| format!("{} {}", e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn every_store_is_prepared_before_the_resolved_ts_and_a_lagging_region_is_waited_for() {
    let _stack = exclusive().await;
    let Some(scene) = scene("prepare", 3).await else { return };
    let before = settled_pd_state(scene.stack).await;
    let lagging = regions(&scene).await.first().expect("a region per store").id;
    control(&scene, reqwest::Method::POST, &format!("/tikv/regions/{lagging}/lag"), Some(json!({"millis": 1500}))).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    scene.apply(&scene.backup_yaml("prep", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let backup = assert_completed(&scene, "prep", &before).await;
    let events = events(&scene).await;
    let kinds: Vec<String> = events.iter().map(|e| format!("{} {}", e["store"], e["event"].as_str().unwrap_or(""))).collect();
    for store in &scene.cluster.tikv {
        let mine: Vec<&Value> = events.iter().filter(|e| e["store"] == store.store_id).collect();
        assert_eq!(mine.first().and_then(|e| e["event"].as_str()), Some("lease"), "store {}: {kinds:?}", store.store_id);
        assert!(mine.iter().any(|e| e["event"] == "wait-apply-done" && e["error"].is_null()), "store {} applied: {kinds:?}", store.store_id);
        assert_eq!(mine.iter().filter(|e| e["event"] == "finish").count(), 1, "finished once: {kinds:?}");
    }
    let lag_done = events.iter().find(|e| e["event"] == "wait-apply-done" && e["region"] == lagging).expect("the lagging region applied");
    let lag_asked = events.iter().find(|e| e["event"] == "wait-apply" && e["region"] == lagging).expect("asked");
    assert!(at(lag_done) >= at(lag_asked) + 1400, "the lagging region was waited for: {lag_asked} -> {lag_done}");
    // Every region applied before the first CreateSnapshots call (the resolved ts is read in between; the
    // step tests on fakes check that order call by call), and the leases were finished only after the last.
    let calls: Vec<u64> = scene.successful_create_snapshots().await.iter().filter_map(|r| r["time"].as_f64()).map(|t| (t * 1000.0) as u64).collect();
    assert!(!calls.is_empty());
    let last_applied = events.iter().filter(|e| e["event"] == "wait-apply-done").map(at).max().unwrap();
    assert!(last_applied <= *calls.iter().min().unwrap(), "applied at {last_applied}, first call at {calls:?}");
    let first_finish = events.iter().filter(|e| e["event"] == "finish").map(at).min().unwrap();
    assert!(first_finish >= *calls.iter().max().unwrap(), "finished at {first_finish}, after the calls at {calls:?}");
    let condition = backup.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == ConditionType::VolumeBackupSnapshotsCreated).cloned();
    let created_at = condition.and_then(|c| c.last_transition_time).map(|t| t.0.as_millisecond() as u64).unwrap();
    assert!(first_finish <= created_at + 1000, "finished by the time the snapshots were recorded created ({first_finish} vs {created_at})");
    assert!(events.iter().filter(|e| e["event"] == "finish").all(|e| e["valid"] == true), "each lease was still valid: {kinds:?}");
    assert!(prepared_stores(&scene).await.is_empty());
    operator.wait_for_metric("tidb_ebs_backup_tikv_wait_apply_seconds_count 1").await;
    control(&scene, reqwest::Method::POST, &format!("/tikv/regions/{lagging}/lag"), Some(json!({"millis": 0}))).await;
    operator.stop().await;
}

#[tokio::test]
async fn splits_are_refused_while_prepared_and_the_lease_is_finished_on_deletion() {
    let _stack = exclusive().await;
    let Some(scene) = scene("prepare-delete", 2).await else { return };
    // Slow CreateSnapshots, so the backup is deleted while the stores are prepared.
    scene.stack.emulator().add_fault(json!({"action": "CreateSnapshots", "delay_ms": 4000, "times": 2})).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    scene.apply(&scene.backup_yaml("held", json!({"cleanPolicy": "Delete", "s3": {"secretName": "keys"}}), json!({}))).await;
    let region = regions(&scene).await.first().expect("a region").id;
    eventually("the stores prepared", Duration::from_secs(30), || async { (prepared_stores(&scene).await.len() == 2).then_some(()) }).await;
    let (status, answer) = control(&scene, reqwest::Method::POST, &format!("/tikv/regions/{region}/split"), None).await;
    assert_eq!(status, 409, "a split is refused while prepared: {answer}");
    scene.api().delete("held", &Default::default()).await.unwrap();
    eventually("the lease finished", Duration::from_secs(20), || async { prepared_stores(&scene).await.is_empty().then_some(()) }).await;
    let finishes = events(&scene).await.iter().filter(|e| e["event"] == "finish").count();
    assert_eq!(finishes, 2, "Finish on deletion, not a lapse");
    scene.wait_gone("held").await;
    let (status, _) = control(&scene, reqwest::Method::POST, &format!("/tikv/regions/{region}/split"), None).await;
    assert_eq!(status, 200, "splits are allowed again");
    operator.stop().await;
}

#[tokio::test]
async fn an_old_tikv_gets_pds_pause_only_and_a_region_that_never_applies_fails_within_the_limit() {
    let _stack = exclusive().await;
    let Some(scene) = scene("prepare-old", 2).await else { return };
    let before = settled_pd_state(scene.stack).await;
    let (old, other) = (scene.cluster.tikv[0].store_id, scene.cluster.tikv[1].store_id);
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;

    // TiKV v7.1 without the service: as the BR of that version, PD's pause only, and a Warning says so.
    control(&scene, reqwest::Method::POST, &format!("/tikv/stores/{old}/prepare"), Some(json!({"mode": "unimplemented", "version": "7.1.2"}))).await;
    scene.apply(&scene.backup_yaml("old", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    assert_completed(&scene, "old", &before).await;
    let warnings = events_about(&scene, "old").await;
    assert!(warnings.iter().any(|e| e.contains("TiKVPrepareUnsupported") && e.contains("7.1.2")), "{warnings:?}");
    assert!(prepared_stores(&scene).await.is_empty(), "the other store was finished at once");

    // A v8.5 store whose region never applies: Failed within the limit, nothing paused or prepared.
    control(&scene, reqwest::Method::POST, &format!("/tikv/stores/{old}/prepare"), Some(json!({"mode": "normal", "version": "8.5.5"}))).await;
    control(&scene, reqwest::Method::POST, &format!("/tikv/stores/{other}/prepare"), Some(json!({"mode": "never-apply"}))).await;
    let started = std::time::Instant::now();
    scene.apply(&scene.backup_yaml("stuck", json!({"cleanPolicy": "Delete", "s3": {"secretName": "keys"}}), json!({}))).await;
    let failed = scene.wait_phase("stuck", &[ConditionType::Failed, ConditionType::Complete], Duration::from_secs(90)).await;
    assert_eq!(failed.phase(), Some(&ConditionType::Failed));
    let condition = failed.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == ConditionType::Failed).cloned().unwrap();
    assert_eq!(condition.reason.as_deref(), Some("WaitApplyTimeout"), "{condition:?}");
    assert!(started.elapsed() < Duration::from_secs(60), "within a third of the pause TTL");
    crate::support::e2e::assert_pd_unchanged(&settled_pd_state(scene.stack).await, &before);
    eventually("both stores finished", Duration::from_secs(10), || async { prepared_stores(&scene).await.is_empty().then_some(()) }).await;
    control(&scene, reqwest::Method::POST, &format!("/tikv/stores/{other}/prepare"), Some(json!({"mode": "normal"}))).await;
    operator.stop().await;
}

#[tokio::test]
async fn a_store_that_drops_its_stream_fails_the_backup_and_its_lease_lapses_on_its_own() {
    let _stack = exclusive().await;
    let Some(scene) = scene("prepare-drop", 2).await else { return };
    let before = settled_pd_state(scene.stack).await;
    let (dropped, other) = (scene.cluster.tikv[0].store_id, scene.cluster.tikv[1].store_id);
    // The store answers the lease, then its stream breaks: it stays prepared until the lease (one TTL) lapses.
    control(&scene, reqwest::Method::POST, &format!("/tikv/stores/{dropped}/prepare"), Some(json!({"mode": "drop"}))).await;
    let ttl = Duration::from_secs(6);
    let operator =
        Operator::start(scene.stack, &scene.namespace, tidb_ebs_backup::backup::Settings { pause_ttl: ttl, ..settings(scene.stack) }).await;
    scene.apply(&scene.backup_yaml("dropped", json!({"cleanPolicy": "Delete", "s3": {"secretName": "keys"}}), json!({}))).await;
    let failed = scene.wait_phase("dropped", &[ConditionType::Failed, ConditionType::Complete], Duration::from_secs(60)).await;
    let condition = failed.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == ConditionType::Failed).cloned().expect("Failed");
    assert_eq!(condition.reason.as_deref(), Some("TiKVPrepareFailed"), "{condition:?}");
    assert!(condition.message.as_deref().unwrap_or("").contains(&format!("store {dropped}")), "{condition:?}");
    assert!(scene.snapshots_tagged(failed.metadata.uid.as_deref().unwrap()).await.is_empty(), "no snapshot of a cluster not fully prepared");
    crate::support::e2e::assert_pd_unchanged(&settled_pd_state(scene.stack).await, &before);
    let ids = [dropped, other];
    eventually("the other store finished", Duration::from_secs(5), || async {
        (!scene.stack.prepared_stores(&ids).await.contains(&other)).then_some(())
    })
    .await;
    eventually("the dropped store's lease lapsed", ttl + Duration::from_secs(5), || async {
        scene.stack.prepared_stores(&ids).await.is_empty().then_some(())
    })
    .await;
    let lapsed = events(&scene).await.iter().any(|e| e["store"] == dropped && e["event"] == "lapsed");
    assert!(lapsed, "the emulator saw the lease lapse, not a Finish");
    control(&scene, reqwest::Method::POST, &format!("/tikv/stores/{dropped}/prepare"), Some(json!({"mode": "normal"}))).await;
    operator.stop().await;
}
