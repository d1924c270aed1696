//! One backup at a time per TidbCluster, decided by the API server: a Lease named after the cluster, in
//! the operator's namespace (where its role may write Leases), held by the Backup's uid. It is created (or taken over) with a precondition the API
//! server enforces, so two Backups reconciled in the same instant cannot both hold it, whatever the
//! watch cache says. The holder's pause keeper renews it; a holder that is gone or finished keeps it
//! until its last renewal is one pause TTL old, so its pause has lapsed before the next backup pauses.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::{Backup, ConditionType};

const HOLDER_ANNOTATION: &str = "tidb-ebs-backup/backup";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    Held,
    /// Another Backup (namespace/name) holds the cluster.
    HeldBy(String),
}

pub struct ClusterClaim {
    client: kube::Client,
    api: Api<Lease>,
    lease: String,
    uid: String,
    backup: String,
    ttl: Duration,
}

impl ClusterClaim {
    pub fn new(client: &kube::Client, claim_namespace: &str, cluster_namespace: &str, cluster: &str, backup: &Backup, ttl: Duration) -> Self {
        Self {
            client: client.clone(),
            api: Api::namespaced(client.clone(), claim_namespace),
            // Namespace and cluster names are DNS labels, so the dotted name is a valid Lease name.
            lease: format!("tidb-ebs-backup.{cluster_namespace}.{cluster}"),
            uid: backup.meta().uid.clone().unwrap_or_default(),
            backup: format!("{}/{}", backup.namespace().unwrap_or_default(), backup.name_any()),
            ttl,
        }
    }

    fn spec(&self) -> serde_json::Value {
        let now = MicroTime(jiff::Timestamp::now());
        json!({"holderIdentity": self.uid, "leaseDurationSeconds": self.ttl.as_secs().max(1), "acquireTime": now, "renewTime": now})
    }

    /// Takes the cluster for this Backup, or says who holds it.
    pub async fn acquire(&self) -> Result<Claim, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.lease).await? else {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": self.lease, "annotations": {HOLDER_ANNOTATION: self.backup}},
                "spec": self.spec(),
            }))
            .expect("lease");
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Claim::Held),
                // Someone created it first: look again next time.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Claim::HeldBy("another Backup".into())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder_uid = spec.holder_identity.clone().unwrap_or_default();
        let holder = lease.annotations().get(HOLDER_ANNOTATION).cloned().unwrap_or_default();
        if holder_uid == self.uid {
            return Ok(Claim::Held);
        }
        if !holder_uid.is_empty() {
            if self.holder_is_live(&holder, &holder_uid).await? {
                return Ok(Claim::HeldBy(holder));
            }
            let renewed = spec.renew_time.map(|t| t.0).or(spec.acquire_time.map(|t| t.0));
            let ttl = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
            let quiet_since = renewed.map(|t| jiff::Timestamp::now().duration_since(t).unsigned_abs());
            if quiet_since.is_some_and(|quiet| quiet < ttl) {
                // Gone or finished, but its pause may still be in force: not before its TTL has passed.
                return Ok(Claim::HeldBy(holder));
            }
        }
        let patch = json!({
            "metadata": {"resourceVersion": lease.metadata.resource_version, "annotations": {HOLDER_ANNOTATION: self.backup}},
            "spec": self.spec(),
        });
        match self.api.patch(&self.lease, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(Claim::Held),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(Claim::HeldBy(holder)),
            Err(e) => Err(e),
        }
    }

    async fn holder_is_live(&self, holder: &str, holder_uid: &str) -> Result<bool, kube::Error> {
        let Some((namespace, name)) = holder.split_once('/') else { return Ok(false) };
        let api: Api<Backup> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?.is_some_and(|b| {
            b.meta().uid.as_deref() == Some(holder_uid) && b.meta().deletion_timestamp.is_none() && !b.phase().is_some_and(ConditionType::is_terminal)
        }))
    }

    /// Marks the claim alive (called with each refresh of the pause). Returns false if it is not ours.
    pub async fn renew(&self) -> Result<bool, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.lease).await? else { return Ok(false) };
        if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(self.uid.as_str()) {
            return Ok(false);
        }
        let patch =
            json!({"metadata": {"resourceVersion": lease.metadata.resource_version}, "spec": {"renewTime": MicroTime(jiff::Timestamp::now())}});
        match self.api.patch(&self.lease, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the cluster back once this Backup no longer pauses it. Only our own claim is deleted.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(&self.lease).await? else { return Ok(()) };
        if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(self.uid.as_str()) {
            return Ok(());
        }
        let guarded = DeleteParams {
            preconditions: Some(Preconditions { resource_version: lease.metadata.resource_version.clone(), uid: lease.metadata.uid.clone() }),
            ..DeleteParams::default()
        };
        match self.api.delete(&self.lease, &guarded).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}
