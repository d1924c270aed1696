//! Benchmark: how long a volume-snapshot backup keeps the TiDB cluster paused, seen from PD, and how
//! long apply -> VolumeBackupSnapshotsCreated and apply -> Complete take, for 3 and 30 TiKV stores.
//! Needs the local stack (`scripts/bench` starts one). Prints a table; asserts nothing.

// The e2e suites' support; an example uses only part of it.
#[allow(dead_code)]
#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::Stack;
use support::e2e::{Operator, Scene, settings};
use tidb_ebs_backup::api::ConditionType;

struct Figures {
    stores: usize,
    volumes: usize,
    to_paused: Duration,
    pause_window: Duration,
    to_snapshots_created: Duration,
    to_complete: Duration,
}

async fn paused_schedulers(stack: &Stack) -> usize {
    stack.pd_get("schedulers?status=paused").await.as_array().map_or(0, Vec::len)
}

async fn measure(stores: usize, volumes_per_store: usize, round: usize) -> Figures {
    let scene = Scene::new(&format!("bench-{stores}-{round}"), stores, volumes_per_store).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let operator = Operator::start(scene.stack, &scene.namespace, settings(scene.stack)).await;
    let api = scene.api();
    let start = Instant::now();
    scene.apply(&scene.backup_yaml("bench", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let (mut paused_at, mut resumed_at, mut created_at) = (None, None, None);
    loop {
        let paused = paused_schedulers(scene.stack).await > 0;
        let now = start.elapsed();
        if paused && paused_at.is_none() {
            paused_at = Some(now);
        }
        if !paused && paused_at.is_some() && resumed_at.is_none() {
            resumed_at = Some(now);
        }
        let backup = api.get("bench").await.expect("get Backup");
        if created_at.is_none()
            && backup.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == ConditionType::VolumeBackupSnapshotsCreated))
        {
            created_at = Some(now);
        }
        match backup.phase() {
            Some(ConditionType::Complete) => break,
            Some(ConditionType::Failed) => panic!("benchmark backup failed: {:#?}", backup.status),
            _ => {}
        }
        assert!(start.elapsed() < Duration::from_secs(300), "benchmark backup did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let to_complete = start.elapsed();
    operator.stop().await;
    let paused_at = paused_at.expect("PD was seen paused");
    Figures {
        stores,
        volumes: stores * volumes_per_store,
        to_paused: paused_at,
        pause_window: resumed_at.unwrap_or(to_complete) - paused_at,
        to_snapshots_created: created_at.unwrap_or(to_complete),
        to_complete,
    }
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let stack = Stack::get();
    println!("PD: {} ({})", stack.pd_url, stack.vars.get("PD_IMPL").map_or("real", String::as_str));
    println!("{:>6} {:>7} {:>12} {:>14} {:>22} {:>12}", "stores", "volumes", "to paused", "pause window", "to SnapshotsCreated", "to Complete");
    for (stores, volumes_per_store) in [(3, 2), (30, 2)] {
        for round in 0..rounds {
            let f = measure(stores, volumes_per_store, round).await;
            println!(
                "{:>6} {:>7} {:>10.0}ms {:>12.0}ms {:>20.0}ms {:>10.0}ms",
                f.stores,
                f.volumes,
                f.to_paused.as_secs_f64() * 1e3,
                f.pause_window.as_secs_f64() * 1e3,
                f.to_snapshots_created.as_secs_f64() * 1e3,
                f.to_complete.as_secs_f64() * 1e3
            );
        }
    }
}
