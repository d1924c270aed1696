//! A whole operator's world in memory: the fakes, a seeded TidbCluster, and the `Context` a reconcile
//! needs, with a loop that drives `crate::backup::reconcile` as the controller would (requeues slept,
//! a pass that changed the Backup followed by another, as its watch event would cause). Each pass runs
//! in a task of its own, as the controller runs it: a pass that panics is a crashed process, which
//! under a `CrashScenario` is restarted at once (and anywhere else fails the test).
//!
//! It runs on real time. The reconciler and its pause keeper read `std::time::Instant` and jiff's wall
//! clock, so under `tokio::time::pause()` the keeper's one-second sleeps would race FakePd's TTLs (on
//! Tokio's clock) ahead of the keeper's own idea of time; the test settings keep the waits short instead.
//!
//! ```ignore
//! let world = World::builder().stores(3).volumes_per_store(2).build();
//! world.create_backup("b1", json!({"cleanPolicy": "Delete"}));
//! world.run_until("b1", |b| phase(b) == Some(&ConditionType::VolumeBackupSnapshotsCreated)).await;
//! world.ec2.complete_all();
//! let done = world.run_until("b1", |b| phase(b) == Some(&ConditionType::Complete)).await;
//! ```

mod cluster;
mod connectors;
mod inspect;
#[cfg(test)]
mod tests;

pub use cluster::{Cluster, TikvMember};
pub use connectors::FakeConnectors;
#[cfg(feature = "failpoints")]
pub use inspect::ended;
pub use inspect::{condition, failure_reason, is, phase};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{controller::Action, watcher};
use serde_json::{Value, json};

use super::failpoints::NoFailpoints;
use super::{FakeApiServer, FakePd, FakeS3, FakeSnapshots};
use crate::api::Backup;
use crate::backup::{Context, Settings};

pub const BUCKET: &str = "backups";
/// Passes `run_until` makes before it gives up.
const MAX_PASSES: usize = 100;

/// Settings for tests: the defaults with the waits cut short. The pause TTL stays at 30 s: nothing
/// waits on it in a passing test, and the keeper's margins (a sixth of it, at least 2 s) need room.
pub fn test_settings() -> Settings {
    Settings {
        pause_ttl: Duration::from_secs(30),
        quiet_wait: Duration::from_secs(1),
        wait_apply_limit: Duration::from_secs(1),
        poll_interval: Duration::from_millis(50),
        throttle_backoff_max: Duration::from_secs(1),
        instance: Some("testkit".into()),
        transient_limit: Duration::from_secs(10),
        claim_namespace: "tidb-ebs-backup".into(),
        create_snapshots_timeout: Duration::from_secs(2),
        ..Settings::default()
    }
}

/// When an `Action` asks to run again (`None`: on the next change). kube keeps the field private, so
/// it is read from the `Debug` form, `Action { requeue_after: Some(1.5s) }`.
pub fn requeue_after(action: &Action) -> Option<Duration> {
    let text = format!("{action:?}");
    let inner = text.strip_prefix("Action { requeue_after: Some(")?.strip_suffix(") }")?;
    let (number, scale) = [("ns", 1e-9), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)]
        .into_iter()
        .find_map(|(unit, scale)| Some((inner.strip_suffix(unit)?.parse::<f64>().ok()?, scale)))
        .unwrap_or_else(|| panic!("unexpected Action debug form {text:?}"));
    Some(Duration::from_secs_f64(number * scale))
}

/// How one reconcile pass ended.
#[derive(Debug)]
pub enum Pass {
    Requeue(Duration),
    AwaitChange,
    /// `reconcile` failed; `requeue` is what `error_policy` decided.
    Failed {
        error: String,
        requeue: Option<Duration>,
    },
    /// The pass panicked (a crash point fired): the process died there and a new one was started.
    Crashed(String),
    /// The Backup does not exist (any more).
    Gone,
}

pub struct WorldBuilder {
    namespace: String,
    cluster: String,
    stores: usize,
    volumes_per_store: usize,
    settings: Settings,
    backup_status_subresource: bool,
    crashes_expected: bool,
}

impl WorldBuilder {
    pub fn stores(mut self, n: usize) -> Self {
        self.stores = n;
        self
    }

    /// 1 (`tikv`) or 2 (plus `tikv-raft`).
    pub fn volumes_per_store(mut self, n: usize) -> Self {
        self.volumes_per_store = n;
        self
    }

    pub fn settings(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(&mut self.settings);
        self
    }

    /// Serve Backups as the project's own CRD variant does: with a `/status` subresource.
    pub fn backup_status_subresource(mut self, enabled: bool) -> Self {
        self.backup_status_subresource = enabled;
        self
    }

    /// A world whose processes crash where `scenario` says (and are restarted).
    #[cfg(feature = "failpoints")]
    pub fn crash_scenario(mut self, _scenario: &super::failpoints::CrashScenario) -> Self {
        self.crashes_expected = true;
        self
    }

    /// Needs a Tokio runtime (the kube client spawns its buffer task).
    pub fn build(self) -> World {
        let failpoints = (!self.crashes_expected).then(NoFailpoints::claim);
        let (api, pd, ec2, s3) = (FakeApiServer::new(), FakePd::new(), FakeSnapshots::new(), FakeS3::new());
        api.set_status_subresource::<Backup>(self.backup_status_subresource);
        s3.add_bucket(BUCKET);
        let cluster = cluster::seed(&api, &pd, &ec2, &self.namespace, &self.cluster, self.stores, self.volumes_per_store);
        let connectors = Arc::new(FakeConnectors::new(pd.clone(), ec2.clone(), s3.clone()));
        let (ctx, cache) = context(&api, &connectors, &self.settings);
        World {
            api,
            pd,
            ec2,
            s3,
            connectors,
            cluster,
            ctx: Mutex::new(ctx),
            cache: Mutex::new(cache),
            settings: self.settings,
            crashes: Mutex::default(),
            _failpoints: failpoints,
        }
    }
}

fn context(api: &FakeApiServer, connectors: &Arc<FakeConnectors>, settings: &Settings) -> (Arc<Context>, Writer<Backup>) {
    let client = api.client();
    let (backups, cache) = reflector::store();
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let ctx = Context::new(client, settings.clone(), connectors.clone(), backups, metrics, Arc::new(crate::k8s::lease::Fence::unfenced()));
    (Arc::new(ctx), cache)
}

pub struct World {
    pub api: FakeApiServer,
    pub pd: FakePd,
    pub ec2: FakeSnapshots,
    pub s3: FakeS3,
    pub connectors: Arc<FakeConnectors>,
    pub cluster: Cluster,
    ctx: Mutex<Arc<Context>>,
    cache: Mutex<Writer<Backup>>,
    settings: Settings,
    /// The panic messages of the passes that crashed, in order.
    crashes: Mutex<Vec<String>>,
    /// `None` under a `CrashScenario`.
    _failpoints: Option<NoFailpoints>,
}

impl World {
    /// 3 TiKV stores with one volume each, cluster `basic` in namespace `tidb`, test settings.
    pub fn builder() -> WorldBuilder {
        WorldBuilder {
            namespace: "tidb".into(),
            cluster: "basic".into(),
            stores: 3,
            volumes_per_store: 1,
            settings: test_settings(),
            backup_status_subresource: false,
            crashes_expected: false,
        }
    }

    /// The running process's context.
    pub fn ctx(&self) -> Arc<Context> {
        self.ctx.lock().expect("ctx").clone()
    }

    /// A new operator process over the same outside world: fresh context, cache and keepers (the old
    /// keepers stop when the old context goes, as they would with the process).
    pub fn restart(&self) {
        let (ctx, cache) = context(&self.api, &self.connectors, &self.settings);
        *self.ctx.lock().expect("ctx") = ctx;
        *self.cache.lock().expect("cache") = cache;
    }

    /// The panic messages of the passes that crashed so far.
    #[cfg(feature = "failpoints")]
    pub fn crashes(&self) -> Vec<String> {
        self.crashes.lock().expect("crashes").clone()
    }

    /// A volume-snapshot Backup of the seeded cluster, as the e2e suites write it (bucket `backups`,
    /// prefix = its name), with `extra_spec` merged into its spec.
    pub fn create_backup(&self, name: &str, extra_spec: Value) -> Backup {
        let mut spec = json!({
            "backupMode": "volume-snapshot", "backupType": "full",
            "br": {"cluster": self.cluster.name, "clusterNamespace": self.cluster.namespace},
            "s3": {"provider": "aws", "region": "us-west-2", "bucket": BUCKET, "prefix": name},
        });
        super::apiserver::merge_patch(&mut spec, &extra_spec);
        let backup = json!({"apiVersion": "pingcap.com/v1alpha1", "kind": "Backup", "metadata": {"name": name, "namespace": self.cluster.namespace}, "spec": spec});
        self.api.insert(&serde_json::from_value::<Backup>(backup).expect("a Backup"))
    }

    pub fn backup(&self, name: &str) -> Option<Backup> {
        self.api.get(Some(&self.cluster.namespace), name)
    }

    /// A Secret with `access_key` and `secret_key`, for `spec.s3.secretName`.
    pub fn seed_s3_secret(&self, name: &str) {
        let data = json!({"access_key": "QUtJQUZBS0U=", "secret_key": "c2VjcmV0"});
        let secret = json!({"metadata": {"name": name, "namespace": self.cluster.namespace}, "data": data});
        self.api.insert::<Secret>(&serde_json::from_value(secret).expect("a Secret"));
    }

    /// A ServiceAccount with an IRSA role, for `spec.serviceAccount`.
    pub fn seed_service_account(&self, name: &str, role_arn: &str) {
        let account =
            json!({"metadata": {"name": name, "namespace": self.cluster.namespace, "annotations": {"eks.amazonaws.com/role-arn": role_arn}}});
        self.api.insert::<ServiceAccount>(&serde_json::from_value(account).expect("a ServiceAccount"));
    }

    /// Gives the controller's cache what the API server holds now, as its watch would.
    pub fn sync_cache(&self) {
        let backups = self.api.all::<Backup>();
        let mut cache = self.cache.lock().expect("cache");
        cache.apply_watcher_event(&watcher::Event::Init);
        for backup in backups {
            cache.apply_watcher_event(&watcher::Event::InitApply(backup));
        }
        cache.apply_watcher_event(&watcher::Event::InitDone);
    }

    /// One reconcile of the Backup `name`, as the controller runs it.
    pub async fn reconcile(&self, name: &str) -> Pass {
        self.sync_cache();
        let Some(backup) = self.backup(name) else { return Pass::Gone };
        let (backup, ctx) = (Arc::new(backup), self.ctx());
        let pass = tokio::spawn(crate::backup::reconcile(backup.clone(), ctx.clone())).await;
        match pass {
            Ok(Ok(action)) => requeue_after(&action).map_or(Pass::AwaitChange, Pass::Requeue),
            Ok(Err(e)) => {
                let requeue = requeue_after(&crate::backup::error_policy(backup, &e, ctx));
                Pass::Failed { error: e.to_string(), requeue }
            }
            Err(e) => {
                let message = panic_message(e);
                assert!(self._failpoints.is_none(), "reconcile of {name} panicked: {message}");
                drop(ctx);
                self.crashes.lock().expect("crashes").push(message.clone());
                self.restart();
                Pass::Crashed(message)
            }
        }
    }

    /// Reconciles `name` until `done` holds for it (`None` once it is gone), sleeping each requeue.
    /// Panics, with the passes made, when it waits for a change that will not come or takes too long.
    pub async fn run_until(&self, name: &str, done: impl Fn(Option<&Backup>) -> bool) -> Option<Backup> {
        let mut passes = Vec::new();
        loop {
            let before = self.backup(name);
            if done(before.as_ref()) {
                return before;
            }
            assert!(passes.len() < MAX_PASSES, "Backup {name} not done after {MAX_PASSES} passes: {passes:#?}");
            let pass = self.reconcile(name).await;
            let after = self.backup(name);
            let changed = before.as_ref().map(|b| &b.metadata.resource_version) != after.as_ref().map(|b| &b.metadata.resource_version);
            if let Pass::Failed { error, .. } = &pass {
                tracing::info!(backup = name, %error, "reconcile failed");
            }
            passes.push(format!("{:?} -> {pass:?}", phase(after.as_ref())));
            match pass {
                Pass::Crashed(message) => tracing::info!(backup = name, %message, "the process crashed; a new one goes on"),
                Pass::Requeue(after) | Pass::Failed { requeue: Some(after), .. } => tokio::time::sleep(after).await,
                _ if changed => {}
                _ if done(after.as_ref()) => return after,
                _ => panic!("Backup {name} waits for a change that will not come: {passes:#?}"),
            }
        }
    }
}

fn panic_message(error: tokio::task::JoinError) -> String {
    let Ok(payload) = error.try_into_panic() else { return "the pass was cancelled".into() };
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}
