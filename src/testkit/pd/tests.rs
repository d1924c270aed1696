use super::*;
use crate::reason::Reasoned;

fn store(id: u64, labels: &[(&str, &str)]) -> Store {
    Store {
        id,
        address: format!("basic-tikv-{id}.basic-tikv-peer.tidb.svc:20160"),
        state_name: "Up".into(),
        version: "8.5.5".into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

#[tokio::test(start_paused = true)]
async fn scheduler_pauses_lapse_after_their_ttl_and_zero_resumes() {
    let pd = FakePd::new();
    pd.pause_scheduler("balance-leader-scheduler", 30).await.unwrap();
    pd.pause_scheduler("balance-region-scheduler", 60).await.unwrap();
    assert!(pd.is_paused());
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(Pd::paused_schedulers(&pd).await.unwrap(), vec!["balance-region-scheduler"]);
    pd.pause_scheduler("balance-region-scheduler", 0).await.unwrap();
    assert!(!pd.is_paused());
    let unknown = pd.pause_scheduler("no-such-scheduler", 30).await.unwrap_err();
    assert!(unknown.to_string().contains("scheduler not found"), "{unknown}");
}

#[tokio::test(start_paused = true)]
async fn config_overrides_are_hidden_from_schedule_config_and_expire() {
    let pd = FakePd::new();
    let values = json!({"schedule.leader-schedule-limit": 0, "schedule.enable-tikv-split-region": false});
    pd.set_config_with_ttl(values.as_object().unwrap(), 30).await.unwrap();
    assert_eq!(pd.config_override("schedule.leader-schedule-limit"), Some(json!(0)));
    assert_eq!(pd.schedule_config().await.unwrap()["leader-schedule-limit"], json!(4), "PD shows the base value");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(pd.config_override("schedule.leader-schedule-limit"), None);
    pd.set_config_with_ttl(values.as_object().unwrap(), 30).await.unwrap();
    pd.set_config_with_ttl(values.as_object().unwrap(), 0).await.unwrap();
    assert!(!pd.is_paused(), "ttl 0 removes the overrides");
    let unsupported = json!({"schedule.max-store-down-time": "1h"});
    let e = pd.set_config_with_ttl(unsupported.as_object().unwrap(), 30).await.unwrap_err();
    assert!(matches!(e, PdError::Status { status: 400, .. }), "{e}");
}

#[tokio::test(start_paused = true)]
async fn service_safepoints_keep_the_minimum_and_expire() {
    let pd = FakePd::new();
    pd.set_gc_safe_point(100);
    let below = pd.update_service_safepoint("br", 60, 50).await.unwrap();
    assert_eq!((below.min_service_id.as_str(), below.min_safe_point), ("gc_worker", 100));
    assert_eq!(pd.safepoint("br"), None, "below the minimum is not saved");
    pd.update_service_safepoint("br", 60, 150).await.unwrap();
    pd.update_service_safepoint("other", 600, 120).await.unwrap();
    assert_eq!(pd.safepoint("br"), Some(150));
    let gc = pd.gc_safepoints().await.unwrap();
    assert_eq!(gc.service_safe_points.iter().map(|s| s.service_id.as_str()).collect::<Vec<_>>(), vec!["gc_worker", "br", "other"]);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(pd.safepoint("br"), None, "expired with its TTL");
    pd.update_service_safepoint("other", 0, 0).await.unwrap();
    assert_eq!(pd.safepoint("other"), None, "ttl 0 removes it");
}

#[tokio::test(start_paused = true)]
async fn faults_fail_the_next_calls_or_all_of_them_or_delay_them_and_calls_are_logged() {
    let pd = FakePd::new();
    pd.add_store(store(1, &[]));
    pd.add_store(store(2, &[("engine", "tiflash")]));
    pd.fail(PdMethod::Stores, Times::Next(2), PdFault::Status(500));
    assert!(pd.stores().await.is_err());
    assert!(pd.stores().await.is_err());
    let stores = pd.stores().await.unwrap();
    assert_eq!(stores.iter().map(Store::is_tiflash).collect::<Vec<_>>(), vec![false, true]);
    pd.fail(PdMethod::ClusterVersion, Times::Always, PdFault::Unreachable);
    for _ in 0..3 {
        assert_eq!(pd.cluster_version().await.unwrap_err().reason(), crate::reason::Reason::PDUnreachable);
    }
    pd.clear_faults();
    pd.set_version("6.2.0");
    assert_eq!(pd.cluster_version().await.unwrap(), "6.2.0");
    pd.fail(PdMethod::Operators, Times::Next(1), PdFault::Delay(Duration::from_secs(5)));
    pd.set_operators(&["add peer"]);
    let started = Instant::now();
    assert_eq!(pd.operators().await.unwrap(), vec!["add peer"]);
    assert!(started.elapsed() >= Duration::from_secs(5));
    pd.set_store_state(1, "Offline");
    assert_eq!(pd.stores().await.unwrap()[0].state_name, "Offline");
    assert_eq!(pd.calls_of(PdMethod::Stores).len(), 4);
    assert_eq!(pd.calls().len(), 4 + 4 + 1);
    pd.set_min_resolved_ts(7, false);
    assert_eq!(pd.min_resolved_ts().await.unwrap(), MinResolvedTs { ts: 7, is_real_time: false });
}

/// A pause as the crate builds it (`pause_config_values`), and its undo, hold and release everything.
#[tokio::test(start_paused = true)]
async fn a_full_pause_and_its_undo() {
    let pd = FakePd::new();
    let config = pd.schedule_config().await.unwrap();
    let (paused, original) = crate::pd::pause_config_values(&config, 3);
    for scheduler in pd.schedulers().await.unwrap() {
        pd.pause_scheduler(&scheduler, 30).await.unwrap();
    }
    pd.set_config_with_ttl(&paused, 30).await.unwrap();
    pd.update_service_safepoint("tidb-ebs-backup-uid", 30, 10).await.unwrap();
    assert_eq!(pd.paused_scheduler_names().len(), DEFAULT_SCHEDULERS.len());
    assert_eq!(pd.config_override("schedule.max-snapshot-count"), Some(json!(40)));
    assert_eq!(pd.safepoint("tidb-ebs-backup-uid"), Some(10));
    for scheduler in pd.schedulers().await.unwrap() {
        pd.pause_scheduler(&scheduler, 0).await.unwrap();
    }
    pd.set_config_with_ttl(&original, 0).await.unwrap();
    pd.update_service_safepoint("tidb-ebs-backup-uid", 0, 0).await.unwrap();
    assert!(!pd.is_paused());
    assert_eq!(pd.safepoint("tidb-ebs-backup-uid"), None);
}
