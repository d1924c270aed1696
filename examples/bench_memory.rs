//! Benchmark: the operator binary's memory (VmRSS now, VmHWM peak, from /proc) as a Deployment would run it
//! — idle with its watch synced, then with many Backups in its cache, then through a 30-store backup.
//! Needs the local stack and `OPERATOR_BIN` (`scripts/bench` builds a release binary and starts both).
//! Prints a table; asserts nothing.

// The e2e suites' support; an example uses only part of it.
#[allow(dead_code)]
#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::e2e::{Scene, spawn_operator_binary};
use support::{Stack, eventually, free_port, http};
use tidb_ebs_backup::api::ConditionType;

/// (VmRSS, VmHWM) in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("operator still running");
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn row(what: &str, pid: u32, elapsed: Option<Duration>) {
    let (rss, hwm) = memory(pid);
    let time = elapsed.map_or(String::new(), |d| format!("{:.1}s", d.as_secs_f64()));
    println!("{what:<48} {rss:>9.1} {hwm:>9.1} {time:>8}");
}

#[tokio::main]
async fn main() {
    let many: usize = std::env::var("BENCH_BACKUPS").ok().and_then(|n| n.parse().ok()).unwrap_or(500);
    let stack = Stack::get();
    let scene = Scene::new("bench-mem", 30, 2).await;
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let args = ["--namespace", &scene.namespace, "--leader-election", "false", "--pd-url-template", &stack.pd_url];
    let more = ["--poll-interval-seconds", "1", "--metrics-addr", &metrics_addr, "--log-level", "warn"];
    let child = spawn_operator_binary(stack, &stack.kubeconfig, "bench-memory-operator", &[&args[..], &more[..]].concat());
    let pid = child.id().expect("operator pid");
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    eventually("the operator to be ready", Duration::from_secs(60), || async {
        (http().get(&readyz).send().await.ok()?.status().as_u16() == 200).then_some(())
    })
    .await;
    println!("operator binary: {}", std::env::var("OPERATOR_BIN").unwrap_or_default());
    println!("{:<48} {:>9} {:>9} {:>8}", "state", "RSS MiB", "peak MiB", "time");
    tokio::time::sleep(Duration::from_secs(2)).await;
    row("idle, watch synced, no Backups", pid, None);

    // Many Backups that fail in preflight (their Secret does not exist): each is reconciled once, then
    // stays in the watch cache, as a long history of Backups does.
    let start = Instant::now();
    let backups: Vec<serde_json::Value> =
        (0..many).map(|i| scene.backup_yaml(&format!("old-{i:04}"), json!({"s3": {"secretName": "missing"}}), json!({}))).collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": backups});
    let out = stack.kubectl_with_stdin(["apply", "-f", "-"], Some(&list.to_string())).await;
    assert!(out.status.success(), "{}", support::describe_output(&out));
    let api = scene.api();
    eventually("every Backup to be Failed", Duration::from_secs(600), || async {
        let listed = api.list(&Default::default()).await.ok()?;
        (listed.items.iter().filter(|b| b.phase() == Some(&ConditionType::Failed)).count() == many).then_some(())
    })
    .await;
    row(&format!("{many} Backups reconciled to Failed"), pid, Some(start.elapsed()));

    let start = Instant::now();
    scene.apply(&scene.backup_yaml("big", json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let done = scene.wait_phase("big", &[ConditionType::Complete, ConditionType::Failed], Duration::from_secs(300)).await;
    assert_eq!(done.phase(), Some(&ConditionType::Complete), "{:#?}", done.status);
    row("then one backup of 30 stores x 2 volumes", pid, Some(start.elapsed()));
    drop(child);
}
