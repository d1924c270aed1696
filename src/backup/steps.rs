//! The side effects of each step. Every step records what it did on the Backup before the next one
//! starts, so a restarted operator continues (or fails cleanly) from the record.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::context::{AwsClients, Context};
use super::keeper::apply_pause;
use super::machine::{Step, next_step};
use super::meta::{self, MetaInputs, TAG_BACKUP_UID};
use super::record::{BackupRecord, Failure, InstancePlan, PauseRecord, RECORD_ANNOTATION, SnapshotPlan};
use super::{Error, Result};
use crate::api::condition::{NewCondition, set_condition, set_progress};
use crate::api::format::{go_duration, human_bytes};
use crate::api::tidbcluster::{ClusterFacts, tidbcluster_resource};
use crate::api::{Backup, BackupStatus, ConditionType};
use crate::aws::{AwsError, SnapshotState};
use crate::k8s::identity::credential_source;
use crate::k8s::volumes::resolve_volumes;
use crate::pd::{Pd, PdEndpoint, PdTls, SCHEDULERS_TO_PAUSE, pause_config_values};

pub const SNAPSHOT_PROGRESS_STEP: &str = "Snapshot";
/// The label that keeps TiDB Operator (through its controllerManager.selector) away from our Backups.
pub const SELECTOR_LABEL: &str = "tidb-ebs-backup.io/managed";
const MIN_CLUSTER_VERSION: (u64, u64) = (6, 3);

/// What the reconcile loop does after a step.
pub enum Outcome {
    Continue,
    Requeue(Duration),
    Stop,
}

pub struct Reconcile<'a> {
    pub(super) ctx: &'a Context,
    pub(super) api: Api<Backup>,
    pub(super) backup: Backup,
    pub(super) record: BackupRecord,
}

/// Now, to the second: Kubernetes stores times to the second, so anything finer would never compare equal.
fn now_time() -> Time {
    Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).expect("now is a valid timestamp"))
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The spec recorded when the backup started replaces the live one, except `cleanPolicy` and `cleanOption`.
fn pin_spec(backup: &mut Backup, record: &BackupRecord) {
    if let Some(pinned) = &record.spec {
        let (clean_policy, clean_option) = (backup.spec.clean_policy, backup.spec.clean_option.take());
        backup.spec = pinned.clone();
        backup.spec.clean_policy = clean_policy;
        backup.spec.clean_option = clean_option;
    }
}

pub(super) fn failure(reason: &str, message: impl Into<String>) -> Failure {
    Failure { reason: reason.into(), message: message.into() }
}

impl<'a> Reconcile<'a> {
    /// The Backup as this operator acts on it: with the spec it started with (see `BackupRecord::spec`).
    pub fn new(ctx: &'a Context, mut backup: Backup) -> Result<Self> {
        let api = Api::namespaced(ctx.client.clone(), backup.metadata.namespace.as_deref().unwrap_or_default());
        let record = BackupRecord::of(&backup).map_err(Error::Record)?;
        if let Some(pinned) = &record.spec
            && (pinned.s3 != backup.spec.s3 || pinned.backup_mode != backup.spec.backup_mode || pinned.br != backup.spec.br)
        {
            tracing::warn!("the spec changed after the backup started; the backup goes on with the spec it started with");
        }
        pin_spec(&mut backup, &record);
        Ok(Self { ctx, api, backup, record })
    }

    /// Takes the object the API server stored as the Backup acted on (with its recorded spec).
    pub(super) fn adopt_stored(&mut self, mut stored: Backup, record: &BackupRecord) {
        pin_spec(&mut stored, record);
        self.backup = stored;
    }

    /// The backup's claim on its TidbCluster (one backup at a time per cluster).
    pub(super) fn claim(&self) -> super::claim::ClusterClaim {
        super::claim::ClusterClaim::new(&self.ctx.client, &self.ctx.settings.claim_namespace, &self.backup.cluster_namespace(), &self.backup.spec.br.cluster, &self.backup, self.ctx.settings.pause_ttl)
    }

    /// Gives the cluster back; a failure only delays the next backup by one pause TTL.
    pub(super) async fn release_claim(&self) {
        if let Err(e) = self.claim().release().await {
            tracing::warn!(error = %e, "releasing the cluster claim failed; the next backup waits one pause TTL");
        }
    }

    /// Rides out a transient problem for up to `Settings::transient_limit` (across requeues and
    /// restarts), then fails with it.
    pub(super) async fn retry_later(&mut self, failure: Failure) -> Result<Outcome> {
        let now = unix_now();
        let since = self.record.transient.as_ref().map_or(now, |t| t.since);
        let limit = self.ctx.settings.transient_limit.as_secs() as i64;
        if now - since > limit {
            let message = format!("{} (for {}s, longer than the {limit}s the operator rides out)", failure.message, now - since);
            return self.fail(Failure { message, ..failure }).await;
        }
        tracing::warn!(reason = %failure.reason, message = %failure.message, "transient problem; retrying");
        let transient = super::record::Transient { since, reason: failure.reason.clone(), message: failure.message.clone() };
        self.save(|_, record, _| record.transient = Some(transient.clone())).await?;
        Ok(Outcome::Requeue(self.ctx.settings.poll_interval.max(Duration::from_secs(2))))
    }

    pub(super) fn uid(&self) -> String {
        self.backup.metadata.uid.clone().unwrap_or_default()
    }

    pub(super) fn name(&self) -> String {
        self.backup.name_any()
    }

    /// Runs steps until one has to wait or the backup is finished.
    pub async fn run(mut self) -> Result<Option<Duration>> {
        // The finalizer follows cleanPolicy on every pass: a Retain backup switched to Delete gets it.
        if super::cleanup::needs_finalizer(&self.backup) && !self.has_finalizer() && !matches!(next_step(&self.backup, &self.record), Step::Ignore) {
            self.set_finalizer(true).await?;
        }
        loop {
            let step = next_step(&self.backup, &self.record);
            tracing::debug!(?step, "next step");
            let outcome = match step {
                Step::Ignore => return Ok(None),
                Step::Done => {
                    self.report_interference().await?;
                    return Ok(None);
                }
                Step::Schedule => self.schedule().await?,
                Step::Preflight => self.preflight().await?,
                Step::Pause => self.pause().await?,
                Step::Snapshot => self.snapshot().await?,
                Step::Resume => self.resume().await?,
                Step::WriteMeta => self.write_meta().await?,
                Step::WaitSnapshots => self.wait_snapshots().await?,
                Step::Finish => self.finish().await?,
                Step::HandleFailure(failure) => self.handle_failure(failure).await?,
            };
            match outcome {
                Outcome::Continue => continue,
                Outcome::Requeue(after) => return Ok(Some(after)),
                Outcome::Stop => return Ok(None),
            }
        }
    }

    /// Writes status and the record together; publishes an Event when the phase changes.
    pub(super) async fn save(&mut self, mut change: impl FnMut(&mut BackupStatus, &mut BackupRecord, &Time)) -> Result<()> {
        let now = now_time();
        let before = self.backup.phase().cloned();
        let base_record = self.record.clone();
        let mut applied = base_record.clone();
        let stored = self
            .ctx
            .writer
            .update(&self.api, &self.backup, |owned| {
                let mut record = owned
                    .annotations
                    .get(RECORD_ANNOTATION)
                    .and_then(|json| serde_json::from_str(json).ok())
                    .unwrap_or_else(|| base_record.clone());
                change(&mut owned.status, &mut record, &now);
                owned.annotations.insert(RECORD_ANNOTATION.into(), record.to_annotation());
                applied = record;
            })
            .await?;
        self.adopt_stored(stored, &applied);
        self.record = applied;
        let after = self.backup.phase().cloned();
        if after != before {
            if let Some(phase) = after {
                self.publish_phase(&phase).await;
                self.ctx.metrics.phase_entered(&phase);
            }
        }
        Ok(())
    }

    async fn publish_phase(&self, phase: &ConditionType) {
        let status = self.backup.status.clone().unwrap_or_default();
        let condition = status.conditions.iter().find(|c| &c.type_ == phase);
        let warning = matches!(phase, ConditionType::Failed | ConditionType::Invalid | ConditionType::CleanFailed);
        let reason = condition.and_then(|c| c.reason.clone()).unwrap_or_else(|| format!("{phase:?}"));
        let note = condition.and_then(|c| c.message.clone()).unwrap_or_else(|| format!("Backup is {phase:?}"));
        self.publish(warning, &reason, &note, &format!("{phase:?}")).await;
    }

    /// An Event on this Backup; failing to publish one is logged, never fatal.
    pub(super) async fn publish(&self, warning: bool, reason: &str, note: &str, action: &str) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: truncate(reason, 128),
            note: Some(truncate(note, 1024)),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&event, &self.backup.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an Event failed");
        }
    }

    pub(super) async fn condition(&mut self, condition: NewCondition) -> Result<()> {
        let mut condition = Some(condition);
        self.save(|status, _, now| {
            if let Some(c) = condition.take() {
                set_condition(status, c, now);
            }
        })
        .await
    }

    async fn fail(&mut self, failure: Failure) -> Result<Outcome> {
        tracing::warn!(reason = %failure.reason, message = %failure.message, "backup failed");
        let mut failure = Some(failure);
        self.save(|_, record, _| {
            if record.failure.is_none() {
                record.failure = failure.take();
            }
        })
        .await?;
        Ok(Outcome::Continue)
    }

    async fn invalid(&mut self, message: impl Into<String>) -> Result<Outcome> {
        self.condition(NewCondition::truthy(ConditionType::Invalid).because("InvalidSpec", message)).await?;
        Ok(Outcome::Stop)
    }

    /// A Backup TiDB Operator marked Invalid is one we will never run: say why and how to fix it.
    async fn report_interference(&mut self) -> Result<()> {
        let Some(message) = super::machine::claimed_by_tidb_operator(&self.backup) else { return Ok(()) };
        if self.record.interference_reported {
            return Ok(());
        }
        let note = format!(
            "TiDB Operator marked this Backup Invalid ({message}), so tidb-ebs-backup will not run it. Keep TiDB Operator \
             away from volume-snapshot Backups: install it with controllerManager.selector [\"{SELECTOR_LABEL}!=true\"], \
             create these Backups with label {SELECTOR_LABEL}=true, and run tidb-ebs-backup with --backup-selector {SELECTOR_LABEL}=true; then re-create this Backup"
        );
        let event = Event {
            type_: EventType::Warning,
            reason: "TiDBOperatorInterference".into(),
            note: Some(truncate(&note, 1024)),
            action: "Skip".into(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&event, &self.backup.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an Event failed");
        }
        tracing::warn!(%note, "Backup claimed by TiDB Operator");
        self.save(|_, record, _| record.interference_reported = true).await
    }

    // ---- Schedule -------------------------------------------------------------------------------

    async fn schedule(&mut self) -> Result<Outcome> {
        if super::cleanup::needs_finalizer(&self.backup) {
            self.set_finalizer(true).await?;
        }
        self.save(|status, record, now| {
            set_condition(status, NewCondition::truthy(ConditionType::Scheduled), now);
            record.started_at.get_or_insert(now.0.as_second());
        })
        .await?;
        crate::crash_point!("schedule.after-save");
        Ok(Outcome::Continue)
    }

    /// Whether another Backup holds this one's TidbCluster or is before it in line.
    async fn backup_ahead(&self) -> Result<bool> {
        let known = self.ctx.backups.state();
        for candidate in super::queue::ahead_of(&known, &self.backup) {
            // The wake-up comes from another watch than this cache, which may not have seen the candidate
            // end yet: the API server has the last word.
            let api: Api<Backup> = Api::namespaced(self.ctx.client.clone(), &candidate.namespace().unwrap_or_default());
            let live = api.get_opt(&candidate.name_any()).await?;
            if live.is_some_and(|b| b.metadata.deletion_timestamp.is_none() && !b.phase().is_some_and(ConditionType::is_terminal)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    // ---- Preflight ------------------------------------------------------------------------------

    async fn preflight(&mut self) -> Result<Outcome> {
        let spec = &self.backup.spec;
        if spec.br.cluster.is_empty() {
            return self.invalid("spec.br.cluster is required: name the TidbCluster to back up").await;
        }
        if spec.s3.as_ref().and_then(|s3| s3.bucket_and_prefix()).is_none() {
            return self.invalid("a volume-snapshot backup needs spec.s3 with a bucket (or the legacy path)").await;
        }
        if self.backup_ahead().await? {
            // The same words for as long as it waits: naming the Backup ahead would rewrite every waiting
            // Backup's status at each hand-over.
            let message = format!(
                "waiting for the Backup ahead of it on TidbCluster {}/{} to finish (one backup at a time per cluster)",
                self.backup.cluster_namespace(),
                self.backup.spec.br.cluster
            );
            self.condition(NewCondition::truthy(ConditionType::Scheduled).because("WaitingForOtherBackup", message)).await?;
            // Woken when the one ahead ends (`queue::next_in_line`); the poll is only a safety net.
            return Ok(Outcome::Requeue(Duration::from_secs(30)));
        }
        // The cache above orders the queue; the API server decides who holds the cluster.
        match self.claim().acquire().await {
            Ok(super::claim::Claim::Held) => {}
            Ok(super::claim::Claim::HeldBy(holder)) => {
                let message = format!(
                    "waiting for the Backup ahead of it on TidbCluster {}/{} to finish (one backup at a time per cluster)",
                    self.backup.cluster_namespace(),
                    self.backup.spec.br.cluster
                );
                tracing::info!(%holder, "the cluster is claimed by another Backup");
                self.condition(NewCondition::truthy(ConditionType::Scheduled).because("WaitingForOtherBackup", message)).await?;
                return Ok(Outcome::Requeue(Duration::from_secs(5)));
            }
            Err(e) if !crate::k8s::is_transient(&e) => {
                return self.fail(failure("KubernetesAPIFailed", format!("claiming the TidbCluster (a Lease in {}): {e}", self.ctx.settings.claim_namespace))).await;
            }
            Err(e) => return Err(e.into()),
        }
        // Nothing is touched yet, so a refusal from the Kubernetes API (e.g. a permission the operator's
        // role lacks) fails the backup with the API's own words rather than retrying in silence.
        let planned = match self.plan().await {
            Err(super::Error::Kube(e)) if !crate::k8s::is_transient(&e) => Err(failure("KubernetesAPIFailed", format!("preflight: {e}"))),
            other => other?,
        };
        match planned {
            Ok((plan, aws)) => {
                let location = aws.meta.location();
                let spec = self.backup.spec.clone();
                self.save(|status, record, now| {
                    record.plan = Some(plan.clone());
                    record.spec = Some(spec.clone());
                    status.backup_path = Some(location.clone());
                    status.time_started = Some(now.clone());
                    set_condition(status, NewCondition::truthy(ConditionType::Prepare), now);
                })
                .await?;
                crate::crash_point!("preflight.after-save");
                Ok(Outcome::Continue)
            }
            Err(failure) => self.fail(failure).await,
        }
    }

    pub(super) async fn aws_clients(&self) -> std::result::Result<AwsClients, Failure> {
        let source = credential_source(&self.ctx.client, &self.backup, 3600)
            .await
            .map_err(|e| failure(e.reason(), e.to_string()))?;
        self.ctx.connectors.aws(&self.backup, &source).await.map_err(|e| {
            failure("AWSCredentialsFailed", format!("using {}: {e}", source.describe()))
        })
    }

    async fn pd_client(&self, cluster: &str, namespace: &str, tls_cluster: bool, url: &str) -> std::result::Result<Arc<dyn Pd>, Failure> {
        let tls = if tls_cluster {
            let secret_name = format!("{cluster}-cluster-client-secret");
            let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), namespace);
            let secret = secrets
                .get_opt(&secret_name)
                .await
                .map_err(|e| failure("KubernetesAPIFailed", format!("reading Secret {namespace}/{secret_name}: {e}")))?
                .ok_or_else(|| failure("PDTLSSecretNotFound", format!("TLS is enabled for the cluster but Secret {namespace}/{secret_name} does not exist")))?;
            let get = |key: &str| {
                secret.data.as_ref().and_then(|d| d.get(key)).map(|v| v.0.clone()).ok_or_else(|| {
                    failure("PDTLSSecretInvalid", format!("Secret {namespace}/{secret_name} has no {key}"))
                })
            };
            Some(PdTls { ca_pem: get("ca.crt")?, cert_pem: get("tls.crt")?, key_pem: get("tls.key")? })
        } else {
            None
        };
        self.ctx
            .connectors
            .pd(PdEndpoint { url: url.to_string(), tls })
            .map_err(|e| failure(e.reason(), e.to_string()))
    }

    async fn tidbcluster(&self, namespace: &str, cluster: &str) -> Result<Option<DynamicObject>> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), namespace, &tidbcluster_resource());
        Ok(api.get_opt(cluster).await?)
    }

    /// Checks everything that can be checked without touching the cluster, and plans the snapshots.
    async fn plan(&self) -> Result<std::result::Result<(SnapshotPlan, AwsClients), Failure>> {
        let cluster = self.backup.spec.br.cluster.clone();
        let namespace = self.backup.cluster_namespace();
        let Some(tc) = self.tidbcluster(&namespace, &cluster).await? else {
            return Ok(Err(failure("TidbClusterNotFound", format!("TidbCluster {namespace}/{cluster} (spec.br.cluster) does not exist"))));
        };
        let facts = ClusterFacts::from_object(&tc);
        if facts.tiflash_replicas > 0 {
            return Ok(Err(failure(
                "TiFlashNotSupported",
                format!("TidbCluster {namespace}/{cluster} has TiFlash; EBS snapshot backups do not capture TiFlash volumes"),
            )));
        }
        if facts.tikv_replicas <= 0 {
            return Ok(Err(failure("NoTiKV", format!("TidbCluster {namespace}/{cluster} has no TiKV replicas"))));
        }
        let pd_url = self.ctx.settings.pd_url(&cluster, &namespace);
        let pd = match self.pd_client(&cluster, &namespace, facts.tls_cluster, &pd_url).await {
            Ok(pd) => pd,
            Err(f) => return Ok(Err(f)),
        };
        let pd_failure = |e: crate::pd::PdError| failure(e.reason(), e.to_string());
        let version = match pd.cluster_version().await {
            Ok(v) => v,
            Err(e) => return Ok(Err(pd_failure(e))),
        };
        if !version_at_least(&version, MIN_CLUSTER_VERSION) {
            return Ok(Err(failure("ClusterVersionTooOld", format!("cluster version {version} is below 6.3.0, the first with EBS snapshot backup"))));
        }
        let stores = match pd.stores().await {
            Ok(s) => s,
            Err(e) => return Ok(Err(pd_failure(e))),
        };
        if let Some(tiflash) = stores.iter().find(|s| s.is_tiflash()) {
            return Ok(Err(failure("TiFlashNotSupported", format!("PD lists TiFlash store {} ({})", tiflash.id, tiflash.address))));
        }
        match pd.min_resolved_ts().await {
            Ok(ts) if ts.is_real_time && ts.ts > 0 && ts.ts != u64::MAX => {}
            Ok(_) => {
                return Ok(Err(failure(
                    "MinResolvedTsNotEnabled",
                    "PD's min resolved ts is not real-time: keep pd-server.min-resolved-ts-persistence-interval and TiKV's report-min-resolved-ts-interval non-zero",
                )));
            }
            Err(e) => return Ok(Err(pd_failure(e))),
        }
        let volumes = match resolve_volumes(&self.ctx.client, &namespace, &cluster, &facts).await {
            Ok(v) => v,
            Err(e) => return Ok(Err(failure(e.reason(), e.to_string()))),
        };
        let tikv_stores: Vec<_> = stores.iter().filter(|s| s.state_name != "Tombstone").collect();
        for store in &volumes.tikv {
            let Some(pd_store) = tikv_stores.iter().find(|s| s.id == store.store_id) else {
                return Ok(Err(failure("StoreMismatch", format!("pod {} is labelled store {}, which PD does not know", store.pod, store.store_id))));
            };
            if !pd_store.address.starts_with(&format!("{}.", store.pod)) {
                return Ok(Err(failure(
                    "StoreMismatch",
                    format!("PD store {} is at {}, not pod {}", store.store_id, pd_store.address, store.pod),
                )));
            }
            if pd_store.state_name != "Up" {
                return Ok(Err(failure("StoreNotUp", format!("TiKV store {} ({}) is {}", store.store_id, store.pod, pd_store.state_name))));
            }
        }
        let ours: BTreeSet<u64> = volumes.tikv.iter().map(|s| s.store_id).collect();
        let peer_domain = format!(".{cluster}-tikv-peer.{namespace}.");
        if let Some(missing) = tikv_stores.iter().find(|s| s.address.contains(&peer_domain) && !ours.contains(&s.id)) {
            return Ok(Err(failure("StoreMismatch", format!("PD store {} ({}) has no TiKV pod", missing.id, missing.address))));
        }
        let aws = match self.aws_clients().await {
            Ok(aws) => aws,
            Err(f) => return Ok(Err(f)),
        };
        let aws_failure = |e: AwsError| failure(e.reason(), e.to_string());
        if let Err(e) = aws.meta.check_bucket().await {
            return Ok(Err(failure("BucketNotAccessible", format!("{}: {e}", aws.meta.location()))));
        }
        match aws.meta.exists(meta::META_FILE).await {
            Ok(false) => {}
            Ok(true) => {
                return Ok(Err(failure(
                    "FileExistedInExternalStorage",
                    format!("{}/{} already exists: use a new prefix for every backup", aws.meta.location(), meta::META_FILE),
                )));
            }
            Err(e) => return Ok(Err(aws_failure(e))),
        }
        let tikv_volume_ids: Vec<String> = volumes.tikv.iter().flat_map(|s| s.volumes.iter().map(|v| v.volume_id.clone())).collect();
        let pd_volume_ids: Vec<String> = volumes.pd.iter().map(|v| v.volume_id.clone()).collect();
        let described = match aws.snapshots.describe_volumes(&[tikv_volume_ids.clone(), pd_volume_ids].concat()).await {
            Ok(v) => v,
            Err(e) => return Ok(Err(aws_failure(e))),
        };
        let by_id: BTreeMap<_, _> = described.iter().map(|v| (v.volume_id.clone(), v)).collect();
        let mut instances: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for store in &volumes.tikv {
            let mut store_instance = None;
            for volume in &store.volumes {
                let Some(info) = by_id.get(&volume.volume_id) else {
                    return Ok(Err(failure("VolumeNotFound", format!("EBS volume {} of pod {} does not exist", volume.volume_id, store.pod))));
                };
                let Some(instance) = info.instance_id.clone() else {
                    return Ok(Err(failure("VolumeNotAttached", format!("EBS volume {} of pod {} is not attached to an instance", volume.volume_id, store.pod))));
                };
                if store_instance.get_or_insert_with(|| instance.clone()) != &instance {
                    return Ok(Err(failure("VolumesOnSeveralInstances", format!("the volumes of pod {} are attached to different instances", store.pod))));
                }
                instances.entry(instance).or_default().push(volume.volume_id.clone());
            }
        }
        for pd_volume in &volumes.pd {
            if !by_id.contains_key(&pd_volume.volume_id) {
                return Ok(Err(failure("VolumeNotFound", format!("EBS volume {} of PD pod {} does not exist", pd_volume.volume_id, pd_volume.pod))));
            }
        }
        let lookups = instances.into_iter().map(|(instance_id, volume_ids)| {
            let snapshots = aws.snapshots.clone();
            async move {
                let attached = snapshots.instance_volumes(&instance_id).await?;
                let exclude_volume_ids = attached.into_iter().filter(|v| !volume_ids.contains(v)).collect();
                Ok::<_, AwsError>(InstancePlan { instance_id, volume_ids, exclude_volume_ids })
            }
        });
        let instance_plans: Vec<_> = futures::stream::iter(lookups).buffered(self.ctx.settings.snapshot_concurrency.max(1)).collect().await;
        let instance_plans = match instance_plans.into_iter().collect::<std::result::Result<Vec<_>, _>>() {
            Ok(plans) => plans,
            Err(e) => return Ok(Err(aws_failure(e))),
        };
        // Last, once every check has passed: the prefix is claimed only by a backup that goes ahead.
        if let Err(f) = self.lock_prefix(&aws).await {
            return Ok(Err(f));
        }
        crate::crash_point!("preflight.after-lock");
        let plan = SnapshotPlan {
            cluster_namespace: namespace,
            cluster,
            pd_url,
            cluster_version: version,
            stores: volumes.tikv,
            pd_volumes: volumes.pd,
            instances: instance_plans,
            volume_az: tikv_volume_ids
                .iter()
                .filter_map(|id| Some((id.clone(), by_id.get(id)?.availability_zone.clone())))
                .collect(),
        };
        Ok(Ok((plan, aws)))
    }

    async fn plan_pd(&self) -> std::result::Result<Arc<dyn Pd>, Failure> {
        let plan = self.record.plan.as_ref().ok_or_else(|| failure("RecordLost", "no snapshot plan recorded"))?;
        let tls = match self.tidbcluster(&plan.cluster_namespace, &plan.cluster).await {
            Ok(Some(tc)) => ClusterFacts::from_object(&tc).tls_cluster,
            _ => false,
        };
        self.pd_client(&plan.cluster, &plan.cluster_namespace, tls, &plan.pd_url).await
    }

    // ---- Pause ----------------------------------------------------------------------------------

    async fn pause(&mut self) -> Result<Outcome> {
        let pd = match self.plan_pd().await {
            Ok(pd) => pd,
            Err(f) => return self.fail(f).await,
        };
        // Held since preflight; asked again because nothing may pause a cluster another Backup holds.
        match self.claim().acquire().await? {
            super::claim::Claim::Held => {}
            super::claim::Claim::HeldBy(holder) => {
                return self.fail(failure("ClusterClaimLost", format!("Backup {holder} holds the TidbCluster now; this backup did not pause it"))).await;
            }
        }
        let ttl = self.ctx.settings.pause_ttl.as_secs().max(3);
        let store_count = self.record.plan.as_ref().map_or(1, |p| p.stores.len());
        let (schedulers, config) = match tokio::try_join!(pd.schedulers(), pd.schedule_config()) {
            Ok(found) => found,
            Err(e) => return self.fail(failure(e.reason(), format!("reading PD schedulers/config: {e}"))).await,
        };
        let schedulers: Vec<String> = schedulers.into_iter().filter(|s| SCHEDULERS_TO_PAUSE.contains(&s.as_str())).collect();
        let (paused_config, original_config) = pause_config_values(&config, store_count);
        // The TTLs start when PD takes the first pause call, so that is the time recorded.
        let started = unix_now();
        let pause = PauseRecord {
            service_safepoint_id: format!("tidb-ebs-backup-{}", self.uid()),
            ttl_seconds: ttl,
            paused_at: started,
            refreshed_at: started,
            schedulers,
            paused_config,
            original_config,
            safepoint: None,
        };
        // Recorded before PD is touched: whatever happens next, a restart knows what to undo.
        let intent = pause.clone();
        let mut stale = false;
        self.save(|status, record, now| {
            // Decided from what the cache showed; the write may land on a newer record (a conflict retry
            // re-runs this on the stored one). A pause already taken is never redone: a second resolved ts
            // would not match the snapshots.
            stale = record.pause.as_ref().is_some_and(|p| p.safepoint.is_some()) || record.all_snapshots_created() || record.resumed || record.failure.is_some();
            if stale {
                return;
            }
            record.pause = Some(intent.clone());
            set_condition(status, NewCondition::truthy(ConditionType::Running).because("PausingScheduling", "pausing PD scheduling and GC"), now);
        })
        .await?;
        if stale {
            tracing::info!("the pause was decided on a stale view of the Backup; going on from the stored record");
            return Ok(Outcome::Continue);
        }
        crate::crash_point!("pause.after-intent");
        if let Err(e) = apply_pause(pd.as_ref(), &pause).await {
            return self.fail(failure("PDPauseFailed", format!("pausing PD scheduling: {e}"))).await;
        }
        crate::crash_point!("pause.after-apply");
        // The keeper starts only after the resolved ts is known, so the wait must end well within the TTL.
        let quiet_wait = self.ctx.settings.quiet_wait.min(Duration::from_secs(ttl / 3));
        if let Err(f) = wait_until_quiet(pd.as_ref(), quiet_wait).await {
            return self.fail(f).await;
        }
        let resolved_ts = match pd.min_resolved_ts().await {
            Ok(ts) if ts.is_real_time && ts.ts > 0 && ts.ts != u64::MAX => ts.ts,
            Ok(ts) => return self.fail(failure("MinResolvedTsNotEnabled", format!("PD's min resolved ts is not usable ({ts:?})"))).await,
            Err(e) => return self.fail(failure(e.reason(), format!("reading min resolved ts: {e}"))).await,
        };
        let safepoint = resolved_ts - 1;
        match pd.update_service_safepoint(&pause.service_safepoint_id, ttl as i64, safepoint).await {
            Ok(update) if update.min_safe_point > safepoint => {
                return self
                    .fail(failure(
                        "GCSafepointAhead",
                        format!("PD's GC safepoint {} ({}) is already past the resolved ts {resolved_ts}", update.min_safe_point, update.min_service_id),
                    ))
                    .await;
            }
            Ok(_) => {}
            Err(e) => return self.fail(failure(e.reason(), format!("setting the service GC safepoint: {e}"))).await,
        }
        crate::crash_point!("pause.after-safepoint");
        match pd.gc_safepoints().await {
            Ok(gc) if gc.gc_safe_point >= resolved_ts => {
                return self
                    .fail(failure("GCSafepointAhead", format!("PD's GC safepoint {} is not below the resolved ts {resolved_ts}", gc.gc_safe_point)))
                    .await;
            }
            Ok(_) => {}
            Err(e) => return self.fail(failure(e.reason(), format!("reading the GC safepoint: {e}"))).await,
        }
        let message = format!("scheduling and GC paused at resolved ts {resolved_ts} (TTL {ttl}s, kept alive)");
        self.save(|status, record, now| {
            if let Some(p) = record.pause.as_mut() {
                p.safepoint = Some(safepoint);
            }
            record.resolved_ts = Some(resolved_ts);
            set_condition(status, NewCondition::truthy(ConditionType::VolumeBackupInitialized).because("Paused", message.clone()), now);
        })
        .await?;
        crate::crash_point!("pause.after-save");
        self.ensure_keeper(pd);
        Ok(Outcome::Continue)
    }

    /// The keeper of this backup's pause (started if none runs), refreshing at once.
    fn ensure_keeper(&self, pd: Arc<dyn Pd>) -> Option<Arc<super::keeper::PauseGuard>> {
        let pause = self.record.pause.clone().filter(|_| !self.record.resumed)?;
        Some(self.ctx.keepers.start(super::keeper::KeeperJob {
            pd,
            api: self.api.clone(),
            namespace: self.backup.metadata.namespace.clone().unwrap_or_default(),
            uid: self.uid(),
            name: self.name(),
            pause,
            max_window_seconds: self.backup.spec.volume_backup_init_job_max_active_seconds,
            writer: self.ctx.writer.clone(),
            fence: self.ctx.fence.clone(),
            claim: self.claim(),
            metrics: self.ctx.metrics.clone(),
            cache: self.ctx.backups.clone(),
            recorder: self.ctx.recorder.clone(),
        }))
    }

    /// How long a pause must still hold for a CreateSnapshots call to be sent.
    fn pause_margin(&self) -> Duration {
        (self.ctx.settings.pause_ttl / 6).max(Duration::from_secs(2))
    }

    // ---- Snapshot -------------------------------------------------------------------------------

    async fn snapshot(&mut self) -> Result<Outcome> {
        let pause = self.record.pause.clone().expect("pause recorded before snapshots");
        let max_window = self.backup.spec.volume_backup_init_job_max_active_seconds;
        if unix_now() - pause.paused_at > max_window {
            return self
                .fail(failure("PauseWindowExceeded", format!("snapshots were not all started within {max_window}s (spec.volumeBackupInitJobMaxActiveSeconds)")))
                .await;
        }
        let pd = match self.plan_pd().await {
            Ok(pd) => pd,
            Err(f) => return self.fail(f).await,
        };
        let Some(guard) = self.ensure_keeper(pd) else {
            return self.fail(failure("PauseLapsed", "PD was resumed before all snapshots were started")).await;
        };
        // A keeper that has just started (after a restart or a hand-over) refreshes at once: no call goes
        // out before PD has confirmed the pause.
        let lapsed = match guard.first_refresh(Duration::from_secs((pause.ttl_seconds / 3).max(1))).await {
            Ok(()) => guard.check(self.pause_margin()),
            Err(why) => Err(why),
        };
        if let Err(why) = lapsed {
            return self.fail(failure("PauseLapsed", format!("{why}; snapshots taken now would not be consistent"))).await;
        }
        let aws = match self.aws_clients().await {
            Ok(aws) => aws,
            Err(f) => return self.fail(f).await,
        };
        let deadline = Instant::now() + Duration::from_secs((pause.paused_at + max_window - unix_now()).max(1) as u64);
        self.wait_for_earlier_calls().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if !self.record.snapshot_requests.is_empty()
                && let Err(e) = self.adopt_snapshots_by_tag(&aws).await?
            {
                return self.fail(failure(e.reason(), format!("looking up this backup's snapshots: {e}"))).await;
            }
            let errors = self.send_create_snapshots(&aws, &guard, deadline).await?;
            let Some((instance, e)) = errors.into_iter().next() else { break };
            let retryable = matches!(&e, CallError::Aws(e) if e.is_ambiguous());
            if retryable && attempt < 3 && guard.check(self.pause_margin()).is_ok() && Instant::now() < deadline {
                // The call may have worked: the next round first looks for its snapshots by tag.
                tracing::warn!(%instance, error = %e, attempt, "CreateSnapshots answer unclear; looking up by tag, then retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            let reason = if matches!(e, CallError::PauseNotHeld(_)) { "PauseLapsed" } else { "CreateSnapshotsFailed" };
            // A timeout may hide a snapshot AWS did create: the failure handler finds those by tag.
            return self.fail(failure(reason, format!("snapshotting instance {instance}: {e}"))).await;
        }
        // Every call has returned: the set is consistent only if the pause held until now.
        if let Err(why) = guard.check(Duration::ZERO).and_then(|()| if self.ctx.fence.held() { Ok(()) } else { Err("this replica lost the leader Lease".into()) }) {
            return self.fail(failure("PauseLapsed", format!("{why} while CreateSnapshots calls were in flight; the snapshots are not consistent"))).await;
        }
        Ok(Outcome::Continue)
    }

    /// Calls sent by an earlier process (crashed, or replaced by another leader) may still be in flight, and
    /// their snapshots not yet visible by tag: sending again now could snapshot a volume twice. So a round
    /// recorded but unanswered is given the call timeout to land first.
    async fn wait_for_earlier_calls(&self) {
        let unanswered = !self.record.snapshot_requests.is_empty() && !self.record.instances_without_snapshots().is_empty();
        let Some(sent) = self.record.snapshots_requested_at.filter(|_| unanswered) else { return };
        let landed_by = sent + self.ctx.settings.create_snapshots_timeout.as_secs() as i64 + 1;
        let wait = landed_by - unix_now();
        if wait > 0 {
            tracing::info!(wait_seconds = wait, "CreateSnapshots calls of an earlier process may still be in flight; waiting before looking them up");
            tokio::time::sleep(Duration::from_secs(wait as u64)).await;
        }
    }

    /// One round of CreateSnapshots for every instance still without snapshots, all at once (bounded by
    /// `snapshot_concurrency`). Each call is sent only while the pause and the Lease are known to hold.
    /// Results are recorded as they come; the errors are returned.
    async fn send_create_snapshots(&mut self, aws: &AwsClients, guard: &Arc<super::keeper::PauseGuard>, deadline: Instant) -> Result<Vec<(String, CallError)>> {
        let pending: Vec<InstancePlan> = self.record.instances_without_snapshots().into_iter().cloned().collect();
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let requested: Vec<String> = pending.iter().map(|i| i.instance_id.clone()).collect();
        let sent_at = unix_now();
        self.save(|_, record, _| {
            for instance in &requested {
                if !record.snapshot_requests.contains(instance) {
                    record.snapshot_requests.push(instance.clone());
                }
            }
            record.snapshots_requested_at = Some(sent_at);
        })
        .await?;
        crate::crash_point!("snapshot.after-requests");
        let plan = self.record.plan.clone().expect("plan recorded");
        let already: BTreeSet<String> = self.record.snapshots.keys().cloned().collect();
        let backoff_max = self.ctx.settings.throttle_backoff_max;
        let margin = self.pause_margin();
        let call_timeout = self.ctx.settings.create_snapshots_timeout;
        // Calls run as tasks so that recording one result never holds up the others.
        let limit = Arc::new(tokio::sync::Semaphore::new(self.ctx.settings.snapshot_concurrency.max(1)));
        let mut calls = tokio::task::JoinSet::new();
        for instance in pending {
            let tags = meta::snapshot_tags(&self.backup, &plan, &instance.instance_id);
            let mut exclude = instance.exclude_volume_ids.clone();
            exclude.extend(instance.volume_ids.iter().filter(|v| already.contains(*v)).cloned());
            let snapshots = aws.snapshots.clone();
            let metrics = self.ctx.metrics.clone();
            let (limit, guard, fence) = (limit.clone(), guard.clone(), self.ctx.fence.clone());
            calls.spawn(async move {
                let _permit = limit.acquire_owned().await.expect("semaphore is never closed");
                let result = retry_throttled(deadline, backoff_max, &metrics, "CreateSnapshots", || {
                    let fenced = guard.check(margin).and_then(|()| if fence.held() { Ok(()) } else { Err("this replica lost the leader Lease".into()) });
                    let call = snapshots.create_snapshots(&instance.instance_id, &exclude, &tags);
                    async move {
                        match fenced {
                            Err(why) => Err(AwsError::Unexpected(format!("{NOT_SENT}{why}"))),
                            Ok(()) => tokio::time::timeout(call_timeout, call).await.unwrap_or_else(|_| {
                                Err(AwsError::Transport { operation: "CreateSnapshots", message: format!("no answer within {}s", call_timeout.as_secs()) })
                            }),
                        }
                    }
                })
                .await;
                crate::crash_point!("snapshot.after-call");
                let result = result.map_err(|e| match e {
                    AwsError::Unexpected(m) if m.starts_with(NOT_SENT) => CallError::PauseNotHeld(m[NOT_SENT.len()..].to_string()),
                    e => CallError::Aws(e),
                });
                (instance, result)
            });
        }
        let total = plan.instances.iter().map(|i| i.volume_ids.len()).sum::<usize>().max(1);
        let mut errors = Vec::new();
        while let Some(joined) = calls.join_next().await {
            // Results that arrived meanwhile are recorded in the same write.
            let mut ready = vec![joined];
            while let Some(more) = calls.try_join_next() {
                ready.push(more);
            }
            let mut batch = Vec::new();
            for joined in ready {
                let (instance, result) = joined.expect("CreateSnapshots task panicked");
                match result {
                    Ok(created) => {
                        if created.iter().any(|c| !instance.volume_ids.contains(&c.volume_id)) {
                            tracing::error!(instance = %instance.instance_id, ?created, "CreateSnapshots snapshotted volumes it was told to exclude");
                        }
                        batch.extend(created);
                    }
                    Err(e) => {
                        tracing::warn!(instance = %instance.instance_id, error = %e, "CreateSnapshots failed");
                        errors.push((instance.instance_id.clone(), e));
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            self.save(|status, record, now| {
                for c in &batch {
                    record.snapshots.insert(c.volume_id.clone(), c.snapshot_id.clone());
                }
                let message = format!("{} of {total} snapshots started", record.snapshots.len());
                set_condition(status, NewCondition::truthy(ConditionType::VolumeBackupInitialized).because("Snapshotting", message), now);
            })
            .await?;
            crate::crash_point!("snapshot.after-save");
            self.ctx.metrics.snapshots_started(batch.len());
        }
        Ok(errors)
    }

    /// Snapshots of this backup found by tag, recorded for the volumes that have none yet.
    async fn adopt_snapshots_by_tag(&mut self, aws: &AwsClients) -> Result<std::result::Result<(), AwsError>> {
        let found = match aws.snapshots.find_snapshots_by_tag(TAG_BACKUP_UID, &self.uid()).await {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        let planned: BTreeSet<String> = self.record.plan.iter().flat_map(|p| p.instances.iter().flat_map(|i| i.volume_ids.clone())).collect();
        let adopt: Vec<_> = found
            .into_iter()
            .filter(|s| planned.contains(&s.volume_id) && s.state != SnapshotState::Error && !self.record.snapshots.contains_key(&s.volume_id))
            .collect();
        if adopt.is_empty() {
            return Ok(Ok(()));
        }
        tracing::info!(count = adopt.len(), "adopting snapshots created before a restart or timeout");
        self.save(|_, record, _| {
            for s in &adopt {
                record.snapshots.entry(s.volume_id.clone()).or_insert_with(|| s.snapshot_id.clone());
            }
        })
        .await?;
        Ok(Ok(()))
    }

    // ---- Resume ---------------------------------------------------------------------------------

    pub(super) async fn resume_pd(&self) -> std::result::Result<(), String> {
        let Some(pause) = self.record.pause.clone() else { return Ok(()) };
        self.ctx.keepers.stop(&self.uid());
        let pd = self.plan_pd().await.map_err(|f| f.message)?;
        let mut last = Ok(());
        // A PD blip must not leave the pause to its TTL: a few quick tries.
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            last = super::keeper::undo_pause(pd.as_ref(), &pause).await;
            if last.is_ok() {
                break;
            }
        }
        last
    }

    async fn resume(&mut self) -> Result<Outcome> {
        let resumed = self.resume_pd().await;
        crate::crash_point!("resume.after-undo");
        let elapsed = self.record.pause.as_ref().map_or(0, |p| unix_now() - p.paused_at);
        self.ctx.metrics.pause_window(elapsed as f64);
        if let Err(message) = &resumed {
            // The snapshots are consistent and PD drops the pause by its TTL: that is no reason to throw
            // them away (BR carries on too). Said loudly instead.
            let ttl = self.record.pause.as_ref().map_or(0, |p| p.ttl_seconds);
            let note = format!("PD could not be told to resume; it drops the pause by itself within {ttl}s; the snapshots are consistent: {message}");
            tracing::warn!(%note);
            self.publish(true, "PDResumeFailed", &note, "Resume").await;
        }
        self.save(|_, record, _| record.resumed = true).await?;
        crate::crash_point!("resume.after-save");
        Ok(Outcome::Continue)
    }

    // ---- Metadata -------------------------------------------------------------------------------

    async fn write_meta(&mut self) -> Result<Outcome> {
        let plan = self.record.plan.clone().expect("plan recorded");
        let Some(tc) = self.tidbcluster(&plan.cluster_namespace, &plan.cluster).await? else {
            return self.fail(failure("TidbClusterNotFound", "the TidbCluster disappeared during the backup")).await;
        };
        let facts = ClusterFacts::from_object(&tc);
        let volumes = match resolve_volumes(&self.ctx.client, &plan.cluster_namespace, &plan.cluster, &facts).await {
            Ok(v) => v,
            // The snapshots exist and PD is resumed: a pod or claim seen mid-restart is waited out.
            Err(e) => return self.retry_later(failure(e.reason(), e.to_string())).await,
        };
        let tc_json = serde_json::to_value(&tc).unwrap_or_default();
        let inputs = MetaInputs {
            pvs: &volumes.pvs,
            pvcs: &volumes.pvcs,
            tidbcluster: &tc_json,
            tikv_replicas: plan.stores.len(),
            pd_replicas: facts.pd_replicas,
            tidb_replicas: facts.tidb_replicas,
        };
        let backupmeta = match meta::build_backupmeta(&self.record, &inputs) {
            Ok(m) => m,
            Err(message) => return self.fail(failure("BackupMetaInvalid", message)).await,
        };
        let aws = match self.aws_clients().await {
            Ok(aws) => aws,
            Err(f) => return self.retry_later(f).await,
        };
        match self.prefix_owner(&aws).await {
            Ok(super::ownership::PrefixOwner::Other(who)) => {
                return self.fail(failure("FileExistedInExternalStorage", format!("{} was claimed by Backup {who} meanwhile", aws.meta.location()))).await;
            }
            Ok(_) => {}
            Err(e) => return self.retry_later(failure(e.reason(), format!("reading the prefix lock: {e}"))).await,
        }
        let body = serde_json::to_vec(&backupmeta).expect("json");
        match aws.meta.put_if_absent(meta::META_FILE, body).await {
            Ok(true) => {}
            Ok(false) => {
                // After a restart the object may be ours; anything else is someone else's backup.
                let existing = aws.meta.get(meta::META_FILE).await.ok().flatten().and_then(|b| serde_json::from_slice(&b).ok());
                let ours = existing.is_some_and(|m| meta::snapshot_ids_in_meta(&m) == meta::snapshot_ids_in_meta(&backupmeta));
                if !ours {
                    return self
                        .fail(failure("FileExistedInExternalStorage", format!("{}/{} was written by someone else meanwhile", aws.meta.location(), meta::META_FILE)))
                        .await;
                }
            }
            Err(e) => return self.retry_later(failure("BackupMetaWriteFailed", format!("writing {}/{}: {e}", aws.meta.location(), meta::META_FILE))).await,
        }
        crate::crash_point!("meta.after-put");
        let message = format!("{} snapshots started; backupmeta written", self.record.snapshots.len());
        self.save(|status, record, now| {
            record.meta_written = true;
            record.transient = None;
            status.commit_ts = record.resolved_ts.map(|ts| ts.to_string());
            set_condition(status, NewCondition::truthy(ConditionType::VolumeBackupSnapshotsCreated).because("SnapshotsCreated", message.clone()), now);
            set_progress(status, SNAPSHOT_PROGRESS_STEP, 0.0, now);
        })
        .await?;
        crate::crash_point!("meta.after-save");
        Ok(Outcome::Continue)
    }

    // ---- Completion -----------------------------------------------------------------------------

    async fn wait_snapshots(&mut self) -> Result<Outcome> {
        // From here on the snapshots are consistent and PD is resumed: a credential, Secret or STS blip is
        // ridden out, never a reason to delete a good set.
        let aws = match self.aws_clients().await {
            Ok(aws) => aws,
            Err(f) => return self.retry_later(f).await,
        };
        let ids: Vec<String> = self.record.snapshots.values().cloned().collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let snapshots = match retry_throttled(deadline, self.ctx.settings.throttle_backoff_max, &self.ctx.metrics, "DescribeSnapshots", || {
            aws.snapshots.describe_snapshots(&ids)
        })
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "DescribeSnapshots failed; retrying");
                return Ok(Outcome::Requeue(self.ctx.settings.poll_interval));
            }
        };
        if let Some(broken) = snapshots.iter().find(|s| s.state == SnapshotState::Error) {
            let detail = broken.state_message.clone().unwrap_or_default();
            return self
                .fail(failure("SnapshotFailed", format!("snapshot {} of volume {} ended in error {detail}", broken.snapshot_id, broken.volume_id)))
                .await;
        }
        let found: BTreeSet<&str> = snapshots.iter().map(|s| s.snapshot_id.as_str()).collect();
        if let Some(missing) = ids.iter().find(|id| !found.contains(id.as_str())) {
            return self.fail(failure("SnapshotMissing", format!("snapshot {missing} no longer exists"))).await;
        }
        let progress = snapshots.iter().map(|s| if s.state == SnapshotState::Completed { 100.0 } else { s.progress }).sum::<f64>()
            / snapshots.len().max(1) as f64;
        let complete = snapshots.iter().all(|s| s.state == SnapshotState::Completed);
        let message = format!("{} of {} snapshots completed", snapshots.iter().filter(|s| s.state == SnapshotState::Completed).count(), snapshots.len());
        self.save(|status, record, now| {
            record.transient = None;
            set_progress(status, SNAPSHOT_PROGRESS_STEP, if complete { 100.0 } else { progress.min(99.9) }, now);
            if complete {
                set_condition(status, NewCondition::truthy(ConditionType::VolumeBackupComplete).because("SnapshotsCompleted", message.clone()), now);
            }
        })
        .await?;
        if complete {
            crate::crash_point!("wait.after-complete");
        }
        Ok(if complete { Outcome::Continue } else { Outcome::Requeue(self.ctx.settings.poll_interval) })
    }

    async fn finish(&mut self) -> Result<Outcome> {
        let (full, incremental) = match self.aws_clients().await {
            Ok(aws) => self.sizes(&aws).await,
            Err(f) => (Err(f.message.clone()), Err(f.message)),
        };
        // A size that cannot be had is left out; it never fails a backup whose snapshots are complete.
        let wanted = self.backup.spec.calc_size_level;
        let usable = |asked: bool, size: std::result::Result<u64, String>, which: &str| {
            if !asked {
                return None;
            }
            size.inspect_err(|message| tracing::warn!(%message, "{which} size unavailable; the backup itself is complete")).ok()
        };
        let full = usable(wanted.full(), full, "full");
        let incremental = usable(wanted.incremental(), incremental, "incremental");
        let started = self.backup.status.as_ref().and_then(|s| s.time_started.clone());
        // A successful OnFailure backup keeps its data: the finalizer goes before `Complete` is shown, so
        // whoever sees `Complete` also sees the finalizer as it will stay.
        if super::cleanup::needs_finalizer(&self.backup) && self.backup.spec.clean_policy == crate::api::CleanPolicy::OnFailure {
            self.set_finalizer(false).await?;
        }
        crate::crash_point!("finish.before-save");
        self.save(|status, record, now| {
            if let Some(full) = full {
                status.backup_size = Some(full as i64);
                status.backup_size_readable = Some(human_bytes(full));
            }
            if let Some(incremental) = incremental {
                status.incremental_backup_size = Some(incremental as i64);
                status.incremental_backup_size_readable = Some(human_bytes(incremental));
            }
            status.commit_ts = record.resolved_ts.map(|ts| ts.to_string());
            status.time_completed = Some(now.clone());
            if let Some(started) = &started {
                let elapsed = now.0.duration_since(started.0).unsigned_abs();
                status.time_taken = Some(go_duration(elapsed));
            }
            set_condition(status, NewCondition::truthy(ConditionType::Complete), now);
        })
        .await?;
        self.release_claim().await;
        self.ctx.metrics.backup_finished("complete", self.record.started_at.map(|s| (unix_now() - s) as f64));
        Ok(Outcome::Stop)
    }

    /// Full and incremental bytes, each on its own: the incremental figure failing keeps the full one.
    /// Only what `calcSizeLevel` asks for is computed (the other is an `Err`).
    async fn sizes(&self, aws: &AwsClients) -> (std::result::Result<u64, String>, std::result::Result<u64, String>) {
        let level = self.backup.spec.calc_size_level;
        let not_asked = || Err("not asked for by calcSizeLevel".to_string());
        if !level.full() && !level.incremental() {
            return (not_asked(), not_asked());
        }
        let ids: Vec<String> = self.record.snapshots.values().cloned().collect();
        let described = match aws.snapshots.describe_snapshots(&ids).await {
            Ok(described) => described,
            Err(e) => return (Err(e.to_string()), Err(e.to_string())),
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        let backoff = self.ctx.settings.throttle_backoff_max;
        let per_volume = described.into_iter().map(|snapshot| {
            let snapshots = aws.snapshots.clone();
            let metrics = self.ctx.metrics.clone();
            async move {
                let full = match snapshot.full_size_bytes {
                    Some(bytes) => Ok(bytes),
                    None => retry_throttled(deadline, backoff, &metrics, "ListSnapshotBlocks", || snapshots.snapshot_block_bytes(&snapshot.snapshot_id))
                        .await
                        .map_err(|e| e.to_string()),
                };
                if !level.incremental() {
                    return (full, Ok(0));
                }
                let incremental = async {
                    let history = retry_throttled(deadline, backoff, &metrics, "DescribeSnapshots", || snapshots.completed_snapshots_of_volume(&snapshot.volume_id))
                        .await
                        .map_err(|e| e.to_string())?;
                    let previous = history
                        .iter()
                        .position(|s| s.snapshot_id == snapshot.snapshot_id)
                        .and_then(|p| p.checked_sub(1))
                        .map(|p| history[p].snapshot_id.clone());
                    match previous {
                        Some(previous) => {
                            retry_throttled(deadline, backoff, &metrics, "ListChangedBlocks", || snapshots.changed_block_bytes(&previous, &snapshot.snapshot_id))
                                .await
                                .map_err(|e| e.to_string())
                        }
                        // The first snapshot of a volume: everything in it is new.
                        None => full.clone(),
                    }
                }
                .await;
                (full, incremental)
            }
        });
        type Bytes = std::result::Result<u64, String>;
        let results: Vec<(Bytes, Bytes)> = futures::stream::iter(per_volume).buffer_unordered(self.ctx.settings.size_concurrency.max(1)).collect().await;
        let total = |pick: fn(&(Bytes, Bytes)) -> &Bytes| results.iter().map(pick).try_fold(0u64, |sum, r| r.clone().map(|b| sum + b));
        let full = if level.full() { total(|r| &r.0) } else { not_asked() };
        let incremental = if level.incremental() { total(|r| &r.1) } else { not_asked() };
        (full, incremental)
    }

    // ---- Failure --------------------------------------------------------------------------------

    async fn handle_failure(&mut self, failure: Failure) -> Result<Outcome> {
        let mut notes = Vec::new();
        self.ctx.keepers.stop(&self.uid());
        if self.record.paused() {
            match self.resume_pd().await {
                Ok(()) => self.save(|_, record, _| record.resumed = true).await?,
                Err(message) => {
                    let ttl = self.record.pause.as_ref().map_or(0, |p| p.ttl_seconds);
                    notes.push(format!("could not resume PD ({message}); PD drops the pause by itself within {ttl}s"));
                }
            }
        }
        if !self.record.snapshots_deleted && (!self.record.snapshots.is_empty() || !self.record.snapshot_requests.is_empty()) {
            match self.delete_own_snapshots().await {
                Ok(count) => {
                    crate::crash_point!("failure.after-delete");
                    notes.push(format!("deleted the {count} snapshots this backup had created"));
                    self.save(|_, record, _| record.snapshots_deleted = true).await?;
                }
                Err(message) => notes.push(format!("could not delete this backup's snapshots: {message}")),
            }
        }
        if self.record.plan.is_some() {
            // Our backupmeta and prefix lock only; a prefix another Backup holds is left as it is.
            let own = match self.aws_clients().await {
                Ok(aws) => match self.snapshots_created(&aws).await {
                    Ok(ids) => self.delete_own_meta(&aws, &ids).await,
                    Err(e) => Err(e),
                },
                Err(f) => Err(f.message),
            };
            if let Err(e) = own {
                notes.push(format!("could not delete this backup's backupmeta or prefix lock: {e}"));
            }
        }
        let message = if notes.is_empty() { failure.message.clone() } else { format!("{}; {}", failure.message, notes.join("; ")) };
        self.save(|status, _, now| {
            set_condition(status, NewCondition::truthy(ConditionType::Failed).because(failure.reason.clone(), message.clone()), now);
        })
        .await?;
        self.release_claim().await;
        self.ctx.metrics.backup_finished("failed", None);
        Ok(Outcome::Stop)
    }

    /// Every snapshot this backup created: the recorded ones and any found by our tag (e.g. from a call
    /// whose answer was lost).
    pub(super) async fn snapshots_created(&self, aws: &AwsClients) -> std::result::Result<BTreeSet<String>, String> {
        let mut ids: BTreeSet<String> = self.record.snapshots.values().cloned().collect();
        let tagged = aws
            .snapshots
            .find_snapshots_by_tag(TAG_BACKUP_UID, &self.uid())
            .await
            .map_err(|e| format!("finding snapshots by tag: {e}"))?;
        ids.extend(tagged.into_iter().map(|s| s.snapshot_id));
        Ok(ids)
    }

    /// Deletes every snapshot this backup created: recorded ones and any found by tag.
    async fn delete_own_snapshots(&self) -> std::result::Result<usize, String> {
        let aws = self.aws_clients().await.map_err(|f| f.message)?;
        let ids = self.snapshots_created(&aws).await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        for id in &ids {
            retry_throttled(deadline, self.ctx.settings.throttle_backoff_max, &self.ctx.metrics, "DeleteSnapshot", || aws.snapshots.delete_snapshot(id))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(ids.len())
    }
}

/// Waits until PD runs no operators (scheduling has drained after the pause).
async fn wait_until_quiet(pd: &dyn Pd, limit: Duration) -> std::result::Result<(), Failure> {
    let deadline = Instant::now() + limit;
    loop {
        match pd.operators().await {
            Ok(ops) if ops.is_empty() => return Ok(()),
            Ok(ops) if Instant::now() >= deadline => {
                return Err(failure("ScheduleNotQuiet", format!("PD still runs {} operators {}s after pausing", ops.len(), limit.as_secs())));
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => return Err(failure(e.reason(), format!("listing PD operators: {e}"))),
        }
    }
}

/// Retries `call` while AWS throttles (rate limits and snapshot quotas), with jittered exponential backoff.
pub async fn retry_throttled<T, F, Fut>(
    deadline: Instant,
    backoff_max: Duration,
    metrics: &crate::metrics::Metrics,
    operation: &'static str,
    mut call: F,
) -> std::result::Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, AwsError>>,
{
    let mut delay = Duration::from_millis(500);
    loop {
        let result = call().await;
        metrics.aws_call(operation, &result);
        match result {
            Err(e) if e.is_throttle() && Instant::now() + delay < deadline => {
                tracing::info!(%operation, error = %e, delay_ms = delay.as_millis() as u64, "AWS throttled; waiting");
                let jitter = 0.5 + (jiff::Timestamp::now().subsec_nanosecond() as f64 / 1e9) * 0.5;
                tokio::time::sleep(delay.mul_f64(jitter)).await;
                delay = (delay * 2).min(backoff_max);
            }
            other => return other,
        }
    }
}

/// Marks a CreateSnapshots call that was not sent because the pause or the Lease could not be vouched for.
const NOT_SENT: &str = "not sent: ";

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0}")]
    Aws(AwsError),
    #[error("not sent: {0}")]
    PauseNotHeld(String),
}

fn version_at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version.trim_start_matches('v').split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    let (v_major, v_minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (v_major, v_minor) >= (major, minor)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_versions() {
        assert!(version_at_least("8.5.5", (6, 3)));
        assert!(version_at_least("v6.3.0", (6, 3)));
        assert!(!version_at_least("6.2.9", (6, 3)));
        assert!(!version_at_least("5.4.0-nightly", (6, 3)));
        assert!(!version_at_least("None", (6, 3)));
    }
}
