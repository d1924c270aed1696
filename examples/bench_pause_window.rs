//! Benchmark: how long a volume-snapshot backup keeps the TiDB cluster paused, seen from PD, against the
//! floor measured in the same run and against a BR-like baseline, for 3, 30, 100 and 300 TiKV stores x 2
//! volumes at 0 and 1000 ms of CreateSnapshots latency. The window is PD's own record where PD keeps one
//! (the PD emulator's `/pause-windows`: the request that paused the first scheduler to the one that resumed
//! the last, exact); a poll of `schedulers?status=paused` runs beside it, and is the figure on a real
//! pd-server (column "polled/gap": its window and its longest gap between polls).
//!
//! Per size, on a fresh emulator state (reset) and one fixture:
//! - **ours**: the operator binary (`OPERATOR_BIN`) with its default flags (plus `BENCH_OPERATOR_ARGS`);
//! - **BR-like**: the same binary with `--snapshot-concurrency 8` (BR's cloud-API concurrency), same steps;
//! - **floor**: the same CreateSnapshots calls (one per instance, the same volumes, tags and options) sent
//!   straight to the emulator all at once by a minimal aws-sdk-ec2 client — or, when there are more instances
//!   than the token bucket's burst, paced by that bucket (AWS's: burst 100, refill 5/s) — plus PD's round trip
//!   (measured in the same run) times the PD round trips that must lie inside the window, calls that need not
//!   wait for each other sent together: the other scheduler pauses and the config TTL, the operators check,
//!   min-resolved-ts, the service safepoint, the resumes — 5 (`PD_ROUNDS_IN_WINDOW`).
//!
//! Each row prints the figure, the floor and the ratio, the operator's peak RSS (VmHWM) and the size of the
//! Backup's record annotation after Complete. Last, one backup of 300 stores x 3 volumes for the record size
//! (the annotation limit is 256 KiB for all annotations together).
//!
//! Environment: `BENCH_SIZES` (default `3,30,100,300`), `BENCH_LATENCIES_MS` (`0,1000`), `BENCH_ROUNDS` (1),
//! `BENCH_RECORD` (`300x3`; `none` to skip), `BENCH_BUCKET` (`100,5`: burst, refill per second, as the
//! operator's `--create-snapshots-burst`/`--create-snapshots-refill-per-second` defaults), `BENCH_BR_CONCURRENCY`
//! (8), `BENCH_OPERATOR_ARGS` (extra flags for "ours", space-separated), `BENCH_AWS_BUCKET` (`on`: the emulator
//! enforces `BENCH_BUCKET` on CreateSnapshots, full at the start of each run; `off`), `BENCH_STALL_SECONDS` (90:
//! a Backup whose record and conditions stay unchanged this long counts as stuck), `BENCH_RUN_TIMEOUT_SECONDS`
//! (300), `OPERATOR_BIN`, `BENCH_OPERATOR_BUILD` (what the binary is, for the header). Needs the local stack
//! (`scripts/bench pause` starts one). Prints; asserts nothing.

#[path = "../tests/e2e/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{CopyTagsFromSource, InstanceSpecification, ResourceType, Tag, TagSpecification};
use futures::{StreamExt, future::join_all, stream};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::{Value, json};
use support::e2e::{Scene, spawn_operator_binary};
use support::{Stack, eventually, free_port, http};
use tidb_ebs_backup::api::ConditionType;
use tidb_ebs_backup::backup::record::RECORD_ANNOTATION;

const ANNOTATION_LIMIT: usize = 256 * 1024;
/// PD round trips that must lie between the first paused scheduler and the last resumed one.
const PD_ROUNDS_IN_WINDOW: u32 = 5;

struct Config {
    sizes: Vec<usize>,
    latencies_ms: Vec<u64>,
    rounds: usize,
    record: Vec<(usize, usize)>,
    bucket: (usize, f64),
    br_concurrency: String,
    ours_args: Vec<String>,
    /// The emulator enforces `bucket` on CreateSnapshots (RequestLimitExceeded beyond it), as AWS does.
    aws_bucket: bool,
}

impl Config {
    fn from_env() -> Config {
        let var = |k: &str, default: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_string());
        let list = |k: &str, default: &str| -> Vec<u64> {
            var(k, default).split(',').map(|s| s.trim().parse().unwrap_or_else(|_| panic!("{k}: {s:?} is not a number"))).collect()
        };
        let record = var("BENCH_RECORD", "300x3");
        let record = if record == "none" {
            vec![]
        } else {
            record
                .split(',')
                .map(|s| {
                    let (a, b) = s.trim().split_once('x').unwrap_or_else(|| panic!("BENCH_RECORD: {s:?} is not STORESxVOLUMES"));
                    (a.parse().expect("BENCH_RECORD stores"), b.parse().expect("BENCH_RECORD volumes"))
                })
                .collect()
        };
        let bucket = var("BENCH_BUCKET", "100,5");
        let (burst, refill) = bucket.split_once(',').expect("BENCH_BUCKET is BURST,REFILL_PER_SECOND");
        Config {
            sizes: list("BENCH_SIZES", "3,30,100,300").into_iter().map(|n| n as usize).collect(),
            latencies_ms: list("BENCH_LATENCIES_MS", "0,1000"),
            rounds: var("BENCH_ROUNDS", "1").parse().expect("BENCH_ROUNDS"),
            record,
            bucket: (burst.trim().parse().expect("bucket burst"), refill.trim().parse().expect("bucket refill")),
            br_concurrency: var("BENCH_BR_CONCURRENCY", "8"),
            ours_args: var("BENCH_OPERATOR_ARGS", "").split_whitespace().map(String::from).collect(),
            aws_bucket: var("BENCH_AWS_BUCKET", "on") != "off",
        }
    }
}

// ---- PD's view of the pause --------------------------------------------------------------------------

#[derive(Default)]
struct PdSeen {
    paused_at: Option<Instant>,
    resumed_at: Option<Instant>,
    polls: u64,
    /// Longest time between two polls inside the window (the measurement's resolution).
    max_gap: Duration,
    /// When the watch ended.
    ended_at: Option<Instant>,
    /// The window as PD itself recorded it (the PD emulator's `/pause-windows`: from the request that paused
    /// the first scheduler to the one that resumed the last), when PD keeps such a record.
    recorded: Option<Duration>,
}

impl PdSeen {
    /// PD's own record where there is one (exact), else what the poll loop saw (within `max_gap`).
    fn window(&self) -> Option<Duration> {
        self.recorded.or_else(|| Some(self.resumed_at? - self.paused_at?))
    }

    fn polled(&self) -> Option<Duration> {
        Some(self.resumed_at? - self.paused_at?)
    }
}

/// The PD emulator's record of scheduler pauses (`PD_IMPL=emulator`); `None` for a real pd-server.
struct PdRecord(Option<String>);

impl PdRecord {
    fn of(stack: &Stack) -> PdRecord {
        let emulated = stack.vars.get("PD_IMPL").is_some_and(|v| v == "emulator");
        PdRecord(emulated.then(|| format!("{}/pause-windows", stack.fake_tikv_control)))
    }

    async fn clear(&self) {
        if let Some(url) = &self.0 {
            http().delete(url).send().await.and_then(|r| r.error_for_status()).expect("clearing PD's pause windows");
        }
    }

    /// The one window since `clear`, if PD keeps a record: first pause to last resume, or to the lapse.
    async fn window(&self) -> Option<Duration> {
        let url = self.0.as_ref()?;
        let windows: Vec<Value> = http().get(url).send().await.ok()?.json().await.ok()?;
        let at = |w: &Value, k: &str| w[k].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
        let (first, last) = (windows.first()?, windows.last()?);
        if windows.len() > 1 {
            note(&format!("PD recorded {} pause windows in one backup (paused, resumed, paused again): first to last", windows.len()));
        }
        if last["lapsed"].as_bool() == Some(true) {
            note("the last pause lapsed on its own: not resumed by the operator");
        }
        Duration::try_from(at(last, "end")?.duration_since(at(first, "start")?)).ok()
    }
}

struct PdWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<PdSeen>,
}

/// Polls `schedulers?status=paused` on one kept-alive connection, about every 2 ms.
fn watch_pd(pd_url: &str) -> PdWatch {
    let url = format!("{pd_url}/pd/api/v1/schedulers?status=paused");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("reqwest client");
        let mut seen = PdSeen::default();
        let mut last: Option<Instant> = None;
        while !stopped.load(Ordering::Relaxed) {
            let answer = match client.get(&url).send().await {
                Ok(r) => r.json::<Value>().await.ok(),
                Err(_) => None,
            };
            let now = Instant::now();
            // A failed poll is no sample: it must not read as "resumed".
            if let Some(paused) = answer.as_ref().and_then(Value::as_array).map(Vec::len) {
                if let Some(prev) = last
                    && seen.paused_at.is_some()
                    && seen.resumed_at.is_none()
                {
                    seen.max_gap = seen.max_gap.max(now - prev);
                }
                last = Some(now);
                seen.polls += 1;
                if paused > 0 {
                    seen.paused_at.get_or_insert(now);
                } else if seen.paused_at.is_some() && seen.resumed_at.is_none() {
                    seen.resumed_at = Some(now);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen.ended_at = Some(Instant::now());
        seen
    });
    PdWatch { stop, task }
}

impl PdWatch {
    async fn finish(self) -> PdSeen {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("PD watch task")
    }
}

/// Median round trip of the kinds of HTTP call the pause makes (a GET of operators, a GET of
/// min-resolved-ts, a scheduler POST that changes nothing), on a kept-alive connection.
async fn pd_round_trip(pd_url: &str) -> Duration {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("reqwest client");
    let base = format!("{pd_url}/pd/api/v1");
    let mut samples = Vec::new();
    for i in 0..31 {
        let t = Instant::now();
        let sent = match i % 3 {
            0 => client.get(format!("{base}/operators")).send().await,
            1 => client.get(format!("{base}/min-resolved-ts")).send().await,
            // Resuming a scheduler that is not paused: a write PD answers without changing anything.
            _ => client.post(format!("{base}/schedulers/balance-leader-scheduler")).json(&json!({"delay": 0})).send().await,
        };
        if let Ok(r) = sent {
            let _ = r.bytes().await;
            if i > 0 {
                samples.push(t.elapsed());
            }
        }
    }
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

// ---- one backup by the operator binary ----------------------------------------------------------------

struct Run {
    seen: PdSeen,
    to_complete: Duration,
    peak_rss_kib: u64,
    /// Of the record as last stored (after Complete, or when the run failed).
    record_bytes: usize,
    annotation_bytes: usize,
    /// Why the backup did not complete (Failed, or stalled), if it did not.
    failure: Option<String>,
    /// CreateSnapshots calls the emulator answered with RequestLimitExceeded during the run.
    throttled: usize,
}

impl Run {
    fn window(&self) -> Option<Duration> {
        self.seen.window().filter(|_| self.failure.is_none())
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn backup_run(scene: &Scene, name: &str, extra_args: &[String]) -> Result<Run, String> {
    let stack = scene.stack;
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut args: Vec<&str> = vec!["--namespace", &scene.namespace, "--lease-namespace", &scene.namespace, "--leader-election", "false"];
    args.extend(["--pd-url-template", &stack.pd_url]);
    args.extend(["--poll-interval-seconds", "1", "--metrics-addr", &metrics_addr, "--log-level", "warn"]);
    args.extend(extra_args.iter().map(String::as_str));
    let child = spawn_operator_binary(stack, &stack.kubeconfig, &format!("bench-{}-{name}", scene.namespace), &args);
    let pid = child.id().ok_or("the operator exited at once")?;
    // For scripts/bench to end it should this process be killed before it can (kill_on_drop needs a drop).
    let pid_file = stack.workdir.join("bench-operator.pid");
    let _ = std::fs::write(&pid_file, format!("{pid}\n"));
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let spawned = Instant::now();
    eventually("the operator to be ready", Duration::from_secs(60), || async {
        (http().get(&readyz).send().await.ok()?.status().as_u16() == 200).then_some(())
    })
    .await;
    note(&format!("{name}: operator ready after {:.1} s", spawned.elapsed().as_secs_f64()));

    let record = PdRecord::of(stack);
    record.clear().await;
    let watch = watch_pd(&stack.pd_url);
    let api = scene.api();
    let log = stack.workdir.join(format!("bench-{}-{name}.log", scene.namespace));
    let since = epoch_seconds();
    let start = Instant::now();
    scene.apply(&scene.backup_yaml(name, json!({"s3": {"secretName": "keys"}}), json!({}))).await;
    let (mut last_state, mut changed_at, mut last, mut polls) = (String::new(), Instant::now(), None, 0u64);
    let failure = loop {
        if let Ok(backup) = api.get(name).await {
            let phase = backup.phase().cloned();
            let why = backup
                .status
                .as_ref()
                .and_then(|s| s.conditions.last())
                .map(|c| format!("{}: {}", c.reason.as_deref().unwrap_or(""), c.message.as_deref().unwrap_or("")));
            // Progress is a change of the record or of what the conditions say (a write that only bumps the
            // resourceVersion, e.g. a status retry, is not progress).
            let state = format!("{phase:?} {why:?} {:?}", backup.annotations().get(RECORD_ANNOTATION));
            if state != last_state {
                (last_state, changed_at) = (state, Instant::now());
            }
            last = Some(backup);
            match phase {
                Some(ConditionType::Complete) => break None,
                Some(ConditionType::Failed) => break Some(format!("Failed ({})", why.unwrap_or_default())),
                _ => {}
            }
        }
        if changed_at.elapsed() > stall_limit() {
            let warning = last_warning(&log).unwrap_or_default();
            break Some(format!(
                "stalled: neither the record nor the conditions changed for {} s; the operator's last warning: {warning}",
                stall_limit().as_secs()
            ));
        }
        if start.elapsed() > run_limit() {
            let warning = last_warning(&log).unwrap_or_default();
            break Some(format!("not Complete after {} s; the operator's last warning: {warning}", run_limit().as_secs()));
        }
        // The API server refusing the Backup for its annotations' size never heals by retrying.
        if polls % 20 == 0 && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("may not be more than 262144 bytes")) {
            break Some("the API server refuses the operator's writes: metadata.annotations are over 262144 bytes".to_string());
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let to_complete = start.elapsed();
    note(&format!("{name}: apply -> {} {:.1} s", failure.as_deref().unwrap_or("Complete"), to_complete.as_secs_f64()));
    let mut seen = watch.finish().await;
    seen.recorded = record.window().await;
    let peak_rss_kib = vm_hwm_kib(pid);
    if failure.is_none() {
        // The claim on the TidbCluster is given back just after Complete is written; killing the operator
        // before that would make the next backup of this cluster wait a pause TTL for it.
        release_claim(scene).await;
    }
    drop(child);
    let _ = std::fs::remove_file(&pid_file);
    if failure.is_some() {
        // What a stuck or failed backup may have left, so that the next run starts clean.
        resume_paused_schedulers(&stack.pd_url).await;
        release_claim(scene).await;
    }
    let annotations = last.as_ref().map(|b| b.annotations().clone()).unwrap_or_default();
    let throttled = stack
        .emulator()
        .requests_where(&[("action", "CreateSnapshots".into()), ("error_code", "RequestLimitExceeded".into()), ("since", format!("{since:.3}"))])
        .await
        .len();
    Ok(Run {
        seen,
        to_complete,
        peak_rss_kib,
        record_bytes: annotations.get(RECORD_ANNOTATION).map_or(0, String::len),
        annotation_bytes: annotations.iter().map(|(k, v)| k.len() + v.len()).sum(),
        failure,
        throttled,
    })
}

fn epoch_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// How long a Backup may stay unchanged before the run counts as stuck (`BENCH_STALL_SECONDS`, default 90).
fn stall_limit() -> Duration {
    Duration::from_secs(std::env::var("BENCH_STALL_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(90))
}

/// How long one backup may take in all (`BENCH_RUN_TIMEOUT_SECONDS`, default 300; the longest healthy run, 300
/// stores 8 at a time at 1 s, takes about 60 s).
fn run_limit() -> Duration {
    Duration::from_secs(std::env::var("BENCH_RUN_TIMEOUT_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300))
}

/// The operator's last WARN or ERROR line, without its colour codes, cut to 400 chars.
fn last_warning(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains("WARN") || l.contains("ERROR"))?;
    let (mut clean, mut chars) = (String::new(), line.chars());
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().take_while(|c| !c.is_ascii_alphabetic()).for_each(drop);
        } else {
            clean.push(c);
        }
    }
    Some(clean.chars().take(400).collect())
}

async fn resume_paused_schedulers(pd_url: &str) {
    let paused = http().get(format!("{pd_url}/pd/api/v1/schedulers?status=paused")).send().await;
    let Ok(names) = paused.map(|r| r.json::<Value>()) else { return };
    for name in names.await.ok().as_ref().and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        let _ = http().post(format!("{pd_url}/pd/api/v1/schedulers/{name}")).json(&json!({"delay": 0})).send().await;
    }
}

/// Waits (10 s at most) until the operator has deleted its claim Lease on the TidbCluster (the operator runs
/// with `--lease-namespace` = the scene's namespace and without leader election, so any Lease there is a
/// claim); deletes them if it has not (PD has been seen resumed by then).
async fn release_claim(scene: &Scene) {
    let leases: Api<Lease> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if leases.list(&Default::default()).await.is_ok_and(|l| l.items.is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    note("a claim Lease is still there 10 s after the backup ended; deleting it");
    let _ = leases.delete_collection(&Default::default(), &Default::default()).await;
}

// ---- the floor: the same calls straight to the emulator --------------------------------------------------

/// Wall time of one CreateSnapshots per TiKV instance (its TiKV volumes: boot and foreign volume excluded,
/// the operator's options and as many tags), all sent at once, or paced by `bucket` (burst, refill/s).
async fn floor_calls(scene: &Scene, ec2: &aws_sdk_ec2::Client, bucket: Option<(usize, f64)>) -> (Duration, usize) {
    let members = &scene.cluster.tikv;
    // Warm: one open connection per call, as a best case.
    join_all(members.iter().map(|m| ec2.describe_instances().instance_ids(&m.instance_id).send())).await;
    let start = Instant::now();
    let calls = members.iter().enumerate().map(|(i, m)| async move {
        if let Some((burst, refill)) = bucket
            && i >= burst
        {
            // 50 ms behind the bucket's refill: the emulator's bucket starts at the first call's arrival, a little
            // after `start`, and a call must never land on a token not there yet (0.1% of a 40 s floor).
            let due = Duration::from_secs_f64((i + 1 - burst) as f64 / refill) + Duration::from_millis(50);
            tokio::time::sleep_until((start + due).into()).await;
        }
        let tags = (0..7).fold(TagSpecification::builder().resource_type(ResourceType::Snapshot), |t, k| {
            t.tags(Tag::builder().key(format!("bench-floor/tag-{k}")).value(format!("{}/{}-{k}", scene.namespace, m.instance_id)).build())
        });
        ec2.create_snapshots()
            .instance_specification(
                InstanceSpecification::builder()
                    .instance_id(&m.instance_id)
                    .exclude_boot_volume(true)
                    .exclude_data_volume_ids(&m.foreign_volume_id)
                    .build(),
            )
            .copy_tags_from_source(CopyTagsFromSource::Volume)
            .tag_specifications(tags.build())
            .description(format!("bench floor of {}", m.instance_id))
            .send()
            .await
    });
    let results = join_all(calls).await;
    let wall = start.elapsed();
    note(&format!("floor{}: {} calls in {:.0} ms", if bucket.is_some() { " (bucket)" } else { "" }, members.len(), ms(wall)));
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(e) = results.iter().find_map(|r| r.as_ref().err()) {
        eprintln!("floor: {failed} of {} CreateSnapshots failed, e.g. {e:?}", members.len());
    }
    (wall, failed)
}

/// Deletes every snapshot in the emulator, so that moto stays fast for the next run.
async fn delete_all_snapshots(ec2: &aws_sdk_ec2::Client) {
    let Ok(listed) = ec2.describe_snapshots().owner_ids("self").send().await else { return };
    let ids: Vec<String> = listed.snapshots().iter().filter_map(|s| s.snapshot_id().map(String::from)).collect();
    let (count, start) = (ids.len(), Instant::now());
    stream::iter(ids)
        .for_each_concurrent(16, |id| async move {
            let _ = ec2.delete_snapshot().snapshot_id(id).send().await;
        })
        .await;
    note(&format!("deleted {count} snapshots in {:.1} s", start.elapsed().as_secs_f64()));
}

// ---- printing -------------------------------------------------------------------------------------------

/// Progress on stderr (the table is on stdout).
fn note(what: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("[bench {:>6.1}s] {what}", start.elapsed().as_secs_f64());
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

struct Row<'a> {
    stores: usize,
    volumes: usize,
    latency_ms: u64,
    ours: &'a Result<Run, String>,
    br: &'a Result<Run, String>,
    /// (wall of the calls, the bucket's wall when the calls exceed its burst)
    calls: (Duration, Option<Duration>),
    pd_rtt: Duration,
}

fn print_header(bucket: (usize, f64)) {
    println!(
        "{:>9} {:>7} | {:>9} {:>9} {:>19} {:>6} | {:>9} {:>6} | {:>14} | {:>8} | {:>9} {:>9} | {:>7}",
        "stores×vol",
        "latency",
        "window",
        "floor",
        "= calls + PD",
        "ratio",
        "BR-like",
        "ratio",
        "peak RSS MiB",
        "record",
        "to Compl.",
        "polled",
        "thr"
    );
    println!(
        "{:>9} {:>7} | {:>9} {:>9} {:>19} {:>6} | {:>9} {:>6} | {:>14} | {:>8} | {:>9} {:>9} | {:>7}",
        "",
        "ms",
        "ms",
        "ms",
        format!("(bucket {}+{}/s)", bucket.0, bucket.1),
        "",
        "ms",
        "",
        "ours / BR",
        "bytes",
        "s ours",
        "/gap ms",
        "ours/BR"
    );
}

fn print_row(r: &Row) {
    let window = |run: &Result<Run, String>| run.as_ref().ok().and_then(Run::window);
    let pd_calls = PD_ROUNDS_IN_WINDOW;
    let calls = r.calls.1.unwrap_or(r.calls.0);
    let floor = calls + r.pd_rtt * pd_calls;
    let fmt_ms = |d: Option<Duration>| d.map_or("—".to_string(), |d| format!("{:.0}", ms(d)));
    let ratio = |d: Option<Duration>| d.map_or("—".to_string(), |d| format!("{:.2}", d.as_secs_f64() / floor.as_secs_f64().max(1e-9)));
    let parts = format!("{:.0}{} + {pd_calls}×{:.1}", ms(calls), if r.calls.1.is_some() { "b" } else { "" }, ms(r.pd_rtt));
    let rss = |run: &Result<Run, String>| run.as_ref().map_or("—".to_string(), |x| format!("{:.1}", x.peak_rss_kib as f64 / 1024.0));
    let ours = r.ours.as_ref().ok();
    let thr = |run: &Result<Run, String>| run.as_ref().map_or("—".to_string(), |x| x.throttled.to_string());
    println!(
        "{:>9} {:>7} | {:>9} {:>9.0} {:>19} {:>6} | {:>9} {:>6} | {:>14} | {:>8} | {:>9} {:>9} | {:>7}",
        format!("{}×{}", r.stores, r.volumes),
        r.latency_ms,
        fmt_ms(window(r.ours)),
        ms(floor),
        parts,
        ratio(window(r.ours)),
        fmt_ms(window(r.br)),
        ratio(window(r.br)),
        format!("{} / {}", rss(r.ours), rss(r.br)),
        ours.map_or("—".to_string(), |x| x.record_bytes.to_string()),
        ours.map_or("—".to_string(), |x| format!("{:.1}", x.to_complete.as_secs_f64())),
        ours.map_or("—".to_string(), |x| match x.seen.polled() {
            Some(polled) if x.seen.recorded.is_some() => format!("{:.0}/{:.0}", ms(polled), ms(x.seen.max_gap)),
            _ => format!("{}/{:.0}", x.seen.polls, ms(x.seen.max_gap)),
        }),
        format!("{}/{}", thr(r.ours), thr(r.br)),
    );
    if r.calls.1.is_some() {
        println!("{:>19}   (all {} calls at once, no bucket: {:.0} ms)", "", r.stores, ms(r.calls.0));
    }
    for (who, run) in [("ours", r.ours), ("BR-like", r.br)] {
        match run {
            Err(e) => println!("{:>19}   {who}: {e}", ""),
            Ok(Run { failure: Some(why), record_bytes, annotation_bytes, .. }) => {
                println!("{:>19}   {who}: {why} (record as last stored: {record_bytes} bytes, all annotations {annotation_bytes})", "")
            }
            Ok(_) => {}
        }
    }
}

// ---- main -----------------------------------------------------------------------------------------------

async fn set_latency(stack: &Stack, latency_ms: u64) {
    let emulator = stack.emulator();
    emulator.delete("latency").await;
    if latency_ms > 0 {
        emulator.post("latency", &json!({"CreateSnapshots": {"fixed_ms": latency_ms}})).await;
    }
}

/// With `bucket`, the emulator's limits are on with only a CreateSnapshots token bucket (every other bucket
/// removed, no per-volume interval, no pending quota); it starts full now. `None` turns the bucket off.
async fn aws_bucket(stack: &Stack, bucket: Option<(usize, f64)>) {
    let emulator = stack.emulator();
    let create = bucket.map_or(Value::Null, |(burst, refill)| json!({"burst": burst, "refill_per_second": refill}));
    let mut buckets: serde_json::Map<String, Value> =
        emulator.limits().await["buckets"].as_object().map(|b| b.keys().map(|k| (k.clone(), Value::Null)).collect()).unwrap_or_default();
    buckets.insert("CreateSnapshots".into(), create);
    let limits = json!({"enabled": bucket.is_some(), "snapshot_interval_seconds": 0, "max_pending_per_volume": 1_000_000,
                        "max_pending_per_region": 1_000_000, "buckets": buckets});
    emulator.set_limits(limits).await;
}

async fn fresh_scene(stack: &Stack, prefix: &str, stores: usize, volumes: usize) -> Scene {
    // A fresh moto per size: its listings slow down with thousands of snapshots.
    stack.emulator().reset().await;
    let start = Instant::now();
    let scene = Scene::new(prefix, stores, volumes).await;
    note(&format!("fixture of {stores} stores × {volumes} volumes in {:.1} s", start.elapsed().as_secs_f64()));
    scene.access_key_secret("keys", json!({"access_key": "a", "secret_key": "b"})).await;
    scene
}

#[tokio::main]
async fn main() {
    let config = Config::from_env();
    let stack = Stack::get();
    let ec2 = stack.ec2_client_without_retries().await;
    println!(
        "operator: {} ({})",
        std::env::var("OPERATOR_BIN").unwrap_or_default(),
        std::env::var("BENCH_OPERATOR_BUILD").unwrap_or_else(|_| "build unknown".into())
    );
    let help = std::env::var("OPERATOR_BIN").ok().and_then(|bin| std::process::Command::new(bin).arg("--help").output().ok());
    let help = help.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let flags: Vec<&str> = ["--snapshot-concurrency", "--create-snapshots-burst", "--create-snapshots-refill-per-second", "--pending-snapshot-limit"]
        .into_iter()
        .filter(|f| help.contains(f))
        .collect();
    // The emulator keeps no snapshot pending (they complete at once) and its quota is off, so the operator's
    // preflight against AWS's default quota of 100 pending snapshots would only refuse the larger sizes.
    let quota: Vec<String> =
        if flags.contains(&"--pending-snapshot-limit") { vec!["--pending-snapshot-limit".into(), "1000000".into()] } else { vec![] };
    let ours_args: Vec<String> = quota.iter().chain(&config.ours_args).cloned().collect();
    let br_args: Vec<String> = quota.iter().cloned().chain(["--snapshot-concurrency".to_string(), config.br_concurrency.clone()]).collect();
    println!("ours: {ours_args:?}; BR-like: {br_args:?}; the binary has {flags:?}");
    println!(
        "PD: {} ({}); AWS: moto emulator, CreateSnapshots latency injected with /_emulator/latency",
        stack.pd_url,
        stack.vars.get("PD_IMPL").map_or("real", String::as_str)
    );
    println!(
        "floor = the same CreateSnapshots calls sent at once by a minimal client (\"b\": paced by the token bucket, when the calls exceed its burst) + PD round trip × {PD_ROUNDS_IN_WINDOW} (the PD round trips the window needs: other pauses and config TTL together, operators, min-resolved-ts, safepoint, resumes together)"
    );
    if config.aws_bucket {
        println!(
            "the emulator enforces a CreateSnapshots token bucket of {} + {}/s as AWS does (RequestLimitExceeded beyond it), full at the start of each run; \"thr\" = such answers in the run",
            config.bucket.0, config.bucket.1
        );
    } else {
        println!("the emulator enforces no request limit (BENCH_AWS_BUCKET=off)");
    }
    println!("record = the Backup's {RECORD_ANNOTATION} annotation after Complete; load average at start: {}", load_average());
    println!();
    print_header(config.bucket);
    let bench_start = Instant::now();
    for &stores in &config.sizes {
        let size_start = Instant::now();
        let scene = fresh_scene(stack, &format!("bench-{stores}"), stores, 2).await;
        let fixture_time = size_start.elapsed();
        for &latency_ms in &config.latencies_ms {
            for round in 0..config.rounds {
                set_latency(stack, latency_ms).await;
                let pd_rtt = pd_round_trip(&stack.pd_url).await;
                // Each run starts with a full bucket.
                let enforced = config.aws_bucket.then_some(config.bucket);
                aws_bucket(stack, enforced).await;
                let ours = backup_run(&scene, &format!("ours-{latency_ms}ms-{round}"), &ours_args).await;
                delete_all_snapshots(&ec2).await;
                aws_bucket(stack, enforced).await;
                let br = backup_run(&scene, &format!("br-{latency_ms}ms-{round}"), &br_args).await;
                delete_all_snapshots(&ec2).await;
                // All at once is the floor only within the burst; beyond it, it is what AWS would allow
                // without a bucket, measured with the emulator's bucket off.
                let beyond_burst = stores > config.bucket.0;
                aws_bucket(stack, enforced.filter(|_| !beyond_burst)).await;
                let (at_once, _) = floor_calls(&scene, &ec2, None).await;
                delete_all_snapshots(&ec2).await;
                let paced = if beyond_burst {
                    aws_bucket(stack, enforced).await;
                    let (paced, _) = floor_calls(&scene, &ec2, Some(config.bucket)).await;
                    delete_all_snapshots(&ec2).await;
                    Some(paced)
                } else {
                    None
                };
                aws_bucket(stack, None).await;
                print_row(&Row { stores, volumes: 2, latency_ms, ours: &ours, br: &br, calls: (at_once, paced), pd_rtt });
            }
        }
        set_latency(stack, 0).await;
        println!(
            "{:>19}   ({stores} stores: fixture {:.0} s, measurements {:.0} s, load average {})",
            "",
            fixture_time.as_secs_f64(),
            (size_start.elapsed() - fixture_time).as_secs_f64(),
            load_average()
        );
    }
    for &(stores, volumes) in &config.record {
        let start = Instant::now();
        let scene = fresh_scene(stack, &format!("bench-rec-{stores}x{volumes}"), stores, volumes).await;
        let fixture_time = start.elapsed();
        aws_bucket(stack, config.aws_bucket.then_some(config.bucket)).await;
        let run = backup_run(&scene, "record", &ours_args).await;
        aws_bucket(stack, None).await;
        match run {
            Ok(run) => println!(
                "record at {stores} stores × {volumes} volumes{}: {} bytes; all annotations {} bytes of {ANNOTATION_LIMIT} ({:.0}%); peak RSS {:.1} MiB; pause window {}; fixture {:.0} s, backup {:.0} s",
                run.failure.as_ref().map_or(String::new(), |why| format!(" — NOT COMPLETE, {why}; record as last stored")),
                run.record_bytes,
                run.annotation_bytes,
                run.annotation_bytes as f64 * 100.0 / ANNOTATION_LIMIT as f64,
                run.peak_rss_kib as f64 / 1024.0,
                match (run.seen.window(), &run.failure) {
                    (Some(w), None) => format!("{:.0} ms", ms(w)),
                    (Some(w), Some(_)) => format!("{:.0} ms as PD saw it, until the bench resumed it or the operator gave up", ms(w)),
                    (None, _) if run.seen.paused_at.is_some() => {
                        let held = run.seen.ended_at.zip(run.seen.paused_at).map_or(0.0, |(end, start)| (end - start).as_secs_f64());
                        format!("PD still paused when the run was ended, {held:.0} s after it paused")
                    }
                    (None, _) => "—".into(),
                },
                fixture_time.as_secs_f64(),
                run.to_complete.as_secs_f64(),
            ),
            Err(e) => println!("record at {stores} stores × {volumes} volumes: {e}"),
        }
        delete_all_snapshots(&ec2).await;
    }
    println!("total {:.0} s; load average at the end: {}", bench_start.elapsed().as_secs_f64(), load_average());
}
