//! Which AWS identity a Backup uses, read from Kubernetes: its access-key Secret, its IAM role
//! annotation, or its ServiceAccount's IRSA role (exchanged through a TokenRequest).

use crate::reason::{Reason, Reasoned};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, PostParams};

use crate::api::{Backup, IAM_ROLE_ANNOTATION};
use crate::aws::CredentialSource;

pub const IRSA_ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
pub const STS_AUDIENCE: &str = "sts.amazonaws.com";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("Secret {namespace}/{name} (spec.s3.secretName) does not exist")]
    SecretNotFound { namespace: String, name: String },
    #[error("Secret {namespace}/{name} (spec.s3.secretName) has no {key} key; it needs access_key and secret_key")]
    SecretKeyMissing { namespace: String, name: String, key: &'static str },
    #[error("ServiceAccount {namespace}/{name} (spec.serviceAccount) does not exist")]
    ServiceAccountNotFound { namespace: String, name: String },
    #[error("requesting a token for ServiceAccount {namespace}/{name}: {source}")]
    TokenRequest { namespace: String, name: String, source: kube::Error },
    #[error("reading {what}: {source}")]
    Kube { what: String, source: kube::Error },
}

impl Reasoned for IdentityError {
    fn reason(&self) -> Reason {
        match self {
            Self::SecretNotFound { .. } => Reason::SecretNotFound,
            Self::SecretKeyMissing { .. } => Reason::SecretKeyMissing,
            Self::ServiceAccountNotFound { .. } => Reason::ServiceAccountNotFound,
            Self::TokenRequest { .. } => Reason::TokenRequestFailed,
            Self::Kube { .. } => Reason::KubernetesAPIFailed,
        }
    }
}

/// Order of precedence: access-key Secret, `iam.amazonaws.com/role`, IRSA ServiceAccount, operator default.
pub async fn credential_source(client: &kube::Client, backup: &Backup, token_seconds: i64) -> Result<CredentialSource, IdentityError> {
    let namespace = backup.metadata.namespace.clone().unwrap_or_default();
    if let Some(secret_name) = backup.spec.s3.as_ref().and_then(|s3| s3.secret_name.clone()).filter(|s| !s.is_empty()) {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let secret = secrets
            .get_opt(&secret_name)
            .await
            .map_err(|source| IdentityError::Kube { what: format!("Secret {namespace}/{secret_name}"), source })?
            .ok_or_else(|| IdentityError::SecretNotFound { namespace: namespace.clone(), name: secret_name.clone() })?;
        let key = |key: &'static str| {
            let value = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
                .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).map(|v| v.trim().to_string()))
                .filter(|v| !v.is_empty());
            value.ok_or_else(|| IdentityError::SecretKeyMissing { namespace: namespace.clone(), name: secret_name.clone(), key })
        };
        return Ok(CredentialSource::AccessKey { access_key: key("access_key")?, secret_key: key("secret_key")?, session_token: None });
    }
    if let Some(role_arn) = backup.annotations().get(IAM_ROLE_ANNOTATION).filter(|r| !r.is_empty()) {
        return Ok(CredentialSource::AssumeRole { role_arn: role_arn.clone() });
    }
    if let Some(sa_name) = backup.spec.service_account.clone().filter(|s| !s.is_empty()) {
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
        let account = accounts
            .get_opt(&sa_name)
            .await
            .map_err(|source| IdentityError::Kube { what: format!("ServiceAccount {namespace}/{sa_name}"), source })?
            .ok_or_else(|| IdentityError::ServiceAccountNotFound { namespace: namespace.clone(), name: sa_name.clone() })?;
        if let Some(role_arn) = account.metadata.annotations.as_ref().and_then(|a| a.get(IRSA_ROLE_ANNOTATION)).filter(|r| !r.is_empty()) {
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![STS_AUDIENCE.to_string()],
                    expiration_seconds: Some(token_seconds.max(600)),
                    ..Default::default()
                },
                ..Default::default()
            };
            let token = accounts
                .create_token_request(&sa_name, &PostParams::default(), &request)
                .await
                .map_err(|source| IdentityError::TokenRequest { namespace: namespace.clone(), name: sa_name.clone(), source })?
                .status
                .map(|s| s.token)
                .unwrap_or_default();
            return Ok(CredentialSource::WebIdentity { role_arn: role_arn.clone(), token });
        }
    }
    Ok(CredentialSource::OperatorDefault)
}
