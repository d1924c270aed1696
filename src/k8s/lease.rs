//! Leader election on a coordination.k8s.io Lease, with a fence: the instant until which this replica
//! is sure nobody else can hold the Lease. Side effects on PD and AWS run only before that instant
//! (minus a margin), and a replica that cannot renew in time exits rather than keep acting.
//!
//! Written here rather than taken from a crate: kube-lease-manager hides the expiry and never reports a
//! loss while the API server is unreachable, and a fence needs exactly that expiry.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Until when this replica may act. A replica without leader election is always allowed.
pub struct Fence {
    held_until: Option<Mutex<Option<Instant>>>,
    margin: Duration,
}

impl Fence {
    /// No leader election: a single replica acts alone.
    pub fn unfenced() -> Self {
        Self { held_until: None, margin: Duration::ZERO }
    }

    pub fn leased(margin: Duration) -> Self {
        Self { held_until: Some(Mutex::new(None)), margin }
    }

    /// Whether the Lease is held for at least the margin from now.
    pub fn held(&self) -> bool {
        match &self.held_until {
            None => true,
            Some(until) => until.lock().expect("fence").is_some_and(|at| at > Instant::now() + self.margin),
        }
    }

    fn extend(&self, until: Instant) {
        if let Some(held) = &self.held_until {
            *held.lock().expect("fence") = Some(until);
        }
    }

    fn revoke(&self) {
        if let Some(held) = &self.held_until {
            *held.lock().expect("fence") = None;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Lease {name}: {source}")]
    Api { name: String, source: kube::Error },
    #[error("lost the Lease {name}: {why}")]
    Lost { name: String, why: String },
}

pub struct LeaderLease {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// What this replica last saw of someone else's Lease: a holder whose record does not change for a whole
/// lease duration (by our own clock, so clock skew between replicas does not matter) has gone.
struct Observed {
    resource_version: Option<String>,
    since: Instant,
}

impl LeaderLease {
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into(), duration }
    }

    fn api_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api { name: self.name.clone(), source }
    }

    /// Waits until this replica holds the Lease; the fence is extended from then on by `keep`.
    /// Refusals (e.g. RBAC) are returned; conflicts and outages are retried.
    pub async fn acquire(&self, fence: &Fence) -> Result<(), LeaseError> {
        let mut observed: Option<Observed> = None;
        loop {
            let started = Instant::now();
            match self.try_acquire(&mut observed).await {
                Ok(true) => {
                    fence.extend(started + self.duration);
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) if crate::k8s::is_transient(&e) => tracing::debug!(error = %e, "taking the Lease; retrying"),
                Err(e) => return Err(self.api_error(e)),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    fn retry_period(&self) -> Duration {
        (self.duration / 5).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }

    async fn try_acquire(&self, observed: &mut Option<Observed>) -> Result<bool, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": self.name},
                "spec": self.spec_taken(0),
            }))
            .expect("lease");
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let version = lease.metadata.resource_version.clone();
        let free = match &holder {
            None => true,
            Some(h) if h == &self.identity => true,
            Some(_) => {
                let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
                match observed {
                    Some(seen) if seen.resource_version == version => seen.since.elapsed() > duration,
                    _ => {
                        *observed = Some(Observed { resource_version: version.clone(), since: Instant::now() });
                        false
                    }
                }
            }
        };
        if !free {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder.as_deref() != Some(&self.identity));
        self.patch_guarded(version, self.spec_taken(transitions)).await
    }

    fn spec_taken(&self, transitions: i32) -> serde_json::Value {
        let now = MicroTime(jiff::Timestamp::now());
        json!({
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration.as_secs().max(1),
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": transitions,
        })
    }

    /// A merge patch carrying the resourceVersion read: the API server refuses it (409) if anyone wrote
    /// the Lease in between, so two replicas can never both take it.
    async fn patch_guarded(&self, resource_version: Option<String>, spec: serde_json::Value) -> Result<bool, kube::Error> {
        let patch = json!({"metadata": {"resourceVersion": resource_version}, "spec": spec});
        match self.api.patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Renews the Lease every third of its duration while held; returns when it is lost: taken by
    /// another replica, deleted, or not renewed before the fence's margin. The fence is revoked first.
    pub async fn keep(&self, fence: &Fence) -> LeaseError {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            loop {
                let started = Instant::now();
                match self.renew().await {
                    Ok(()) => {
                        fence.extend(started + self.duration);
                        last_renewed = started;
                        break;
                    }
                    Err(why) => {
                        let lost = matches!(why, Renewal::Taken(_)) || !fence.held();
                        if lost {
                            fence.revoke();
                            return LeaseError::Lost { name: self.name.clone(), why: why.to_string() };
                        }
                        tracing::warn!(error = %why, since_renewal = ?last_renewed.elapsed(), "renewing the Lease failed; retrying");
                        tokio::time::sleep(self.retry_period()).await;
                    }
                }
            }
        }
    }

    async fn renew(&self) -> Result<(), Renewal> {
        let lease = self.api.get_opt(&self.name).await.map_err(Renewal::Api)?.ok_or_else(|| Renewal::Taken("the Lease was deleted".into()))?;
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
        if holder != self.identity {
            return Err(Renewal::Taken(format!("{holder:?} holds it now")));
        }
        let patch = json!({"renewTime": MicroTime(jiff::Timestamp::now())});
        match self.patch_guarded(lease.metadata.resource_version.clone(), patch).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Renewal::Taken("the Lease changed under us".into())),
            Err(e) => Err(Renewal::Api(e)),
        }
    }

    /// Hands the Lease back so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(lease)) = self.api.get_opt(&self.name).await else { return };
        if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(self.identity.as_str()) {
            return;
        }
        let spec = json!({"holderIdentity": null, "leaseDurationSeconds": 1});
        if let Err(e) = self.patch_guarded(lease.metadata.resource_version, spec).await {
            tracing::warn!(error = %e, "releasing the Lease failed; it expires by itself");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Renewal {
    #[error("{0}")]
    Api(kube::Error),
    #[error("{0}")]
    Taken(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_holds_only_with_margin_before_the_expiry() {
        let fence = Fence::leased(Duration::from_secs(2));
        assert!(!fence.held(), "nothing held yet");
        fence.extend(Instant::now() + Duration::from_secs(10));
        assert!(fence.held());
        fence.extend(Instant::now() + Duration::from_secs(1));
        assert!(!fence.held(), "inside the margin");
        fence.extend(Instant::now() + Duration::from_secs(10));
        fence.revoke();
        assert!(!fence.held());
        assert!(Fence::unfenced().held());
    }
}
