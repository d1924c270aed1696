//! PD and AWS clients for one reconcile, built at most once each: from the TidbCluster (PD, its TLS
//! Secret) and the Backup's identity (an access-key Secret, an IAM role annotation, IRSA).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject};

use super::context::{AwsClients, Context};
use super::record::{Failure, SnapshotPlan};
use crate::api::Backup;
use crate::api::tidbcluster::{ClusterFacts, tidbcluster_resource};
use crate::aws::{AwsError, CredentialSource};
use crate::k8s::identity::credential_source;
use crate::pd::{Pd, PdEndpoint, PdTls};
use crate::reason::Reason;

/// How long a web-identity token asked for a Backup's ServiceAccount lives.
const TOKEN_SECONDS: i64 = 3600;

pub struct Clients<'a> {
    ctx: &'a Context,
    aws: Option<AwsClients>,
    pd: Option<Arc<dyn Pd>>,
    tls: Option<Option<PdTls>>,
}

impl<'a> Clients<'a> {
    pub fn new(ctx: &'a Context) -> Self {
        Self { ctx, aws: None, pd: None, tls: None }
    }

    /// AWS clients with the Backup's own identity.
    pub async fn aws(&mut self, backup: &Backup) -> Result<AwsClients, Failure> {
        if let Some(aws) = &self.aws {
            return Ok(aws.clone());
        }
        let source = credential_source(&self.ctx.client, backup, TOKEN_SECONDS).await?;
        let aws = self
            .ctx
            .connectors
            .aws(backup, &source)
            .await
            .map_err(|e| Failure::new(Reason::AWSCredentialsFailed, format!("using {}: {e}", source.describe())))?;
        self.aws = Some(aws.clone());
        Ok(aws)
    }

    /// AWS clients with the operator's own identity (for clean-up when the Backup's is gone).
    pub async fn operator_aws(&self, backup: &Backup) -> Result<AwsClients, AwsError> {
        self.ctx.connectors.aws(backup, &CredentialSource::OperatorDefault).await
    }

    pub async fn tidbcluster(&self, namespace: &str, cluster: &str) -> Result<Option<DynamicObject>, kube::Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), namespace, &tidbcluster_resource());
        api.get_opt(cluster).await
    }

    /// PD of a cluster, over TLS with the cluster's client Secret when the cluster uses TLS.
    pub async fn pd(&self, cluster: &str, namespace: &str, tls_cluster: bool, url: &str) -> Result<Arc<dyn Pd>, Failure> {
        let tls = if tls_cluster { Some(self.pd_tls(cluster, namespace).await?) } else { None };
        Ok(self.ctx.connectors.pd(PdEndpoint { url: url.to_string(), tls })?)
    }

    /// PD of the planned cluster.
    pub async fn plan_pd(&mut self, plan: Option<&SnapshotPlan>) -> Result<Arc<dyn Pd>, Failure> {
        if let Some(pd) = &self.pd {
            return Ok(pd.clone());
        }
        let plan = plan.ok_or_else(|| Failure::new(Reason::RecordLost, "no snapshot plan recorded"))?;
        let tls = self.plan_tls(plan).await?;
        let pd = self.ctx.connectors.pd(PdEndpoint { url: plan.pd_url.clone(), tls })?;
        self.pd = Some(pd.clone());
        Ok(pd)
    }

    /// TiKV's stores of the planned cluster, over TLS with the same client certificate as PD.
    pub async fn plan_tikv(&mut self, plan: Option<&SnapshotPlan>) -> Result<Arc<dyn crate::tikv::Tikv>, Failure> {
        let plan = plan.ok_or_else(|| Failure::new(Reason::RecordLost, "no snapshot plan recorded"))?;
        let tls = self.plan_tls(plan).await?;
        Ok(self.ctx.connectors.tikv(tls))
    }

    async fn plan_tls(&mut self, plan: &SnapshotPlan) -> Result<Option<PdTls>, Failure> {
        if let Some(tls) = &self.tls {
            return Ok(tls.clone());
        }
        let tls_cluster = match self.tidbcluster(&plan.cluster_namespace, &plan.cluster).await {
            Ok(Some(tc)) => ClusterFacts::from_object(&tc).tls_cluster,
            _ => false,
        };
        let tls = if tls_cluster { Some(self.pd_tls(&plan.cluster, &plan.cluster_namespace).await?) } else { None };
        self.tls = Some(tls.clone());
        Ok(tls)
    }

    async fn pd_tls(&self, cluster: &str, namespace: &str) -> Result<PdTls, Failure> {
        let secret_name = format!("{cluster}-cluster-client-secret");
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), namespace);
        let secret = secrets
            .get_opt(&secret_name)
            .await
            .map_err(|e| Failure::new(Reason::KubernetesAPIFailed, format!("reading Secret {namespace}/{secret_name}: {e}")))?
            .ok_or_else(|| {
                Failure::new(
                    Reason::PDTLSSecretNotFound,
                    format!("TLS is enabled for the cluster but Secret {namespace}/{secret_name} does not exist"),
                )
            })?;
        let get = |key: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.0.clone())
                .ok_or_else(|| Failure::new(Reason::PDTLSSecretInvalid, format!("Secret {namespace}/{secret_name} has no {key}")))
        };
        Ok(PdTls { ca_pem: get("ca.crt")?, cert_pem: get("tls.crt")?, key_pem: get("tls.key")? })
    }
}
