//! Per-Backup AWS identity: an access key pair, an assumed IAM role, an IRSA web identity, or the
//! operator's own default chain. Role credentials are fetched in-process from STS.

use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;

use super::{AwsError, Result};

/// Where a Backup's AWS credentials come from. Secrets never leave this type through `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialSource {
    OperatorDefault,
    AccessKey { access_key: String, secret_key: String, session_token: Option<String> },
    AssumeRole { role_arn: String },
    WebIdentity { role_arn: String, token: String },
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl CredentialSource {
    /// A description safe for logs, Events and status.
    pub fn describe(&self) -> String {
        match self {
            Self::OperatorDefault => "the operator's own AWS identity".into(),
            Self::AccessKey { .. } => "an access key from spec.s3.secretName".into(),
            Self::AssumeRole { role_arn } => format!("IAM role {role_arn} (AssumeRole)"),
            Self::WebIdentity { role_arn, .. } => format!("IAM role {role_arn} (IRSA web identity)"),
        }
    }
}

pub const APP_NAME: &str = "tidb-ebs-backup";

/// Operator-wide AWS settings.
#[derive(Clone, Debug)]
pub struct AwsSettings {
    /// The operator's own config (default chain, region, endpoint overrides from the environment).
    pub base: SdkConfig,
}

impl AwsSettings {
    pub async fn from_environment() -> Self {
        Self { base: super::config_loader().load().await }
    }
}

/// An SDK config carrying one Backup's identity and region, with when its credentials expire.
#[derive(Clone, Debug)]
pub struct AwsIdentity {
    pub config: SdkConfig,
    pub expires: Option<SystemTime>,
}

impl AwsIdentity {
    pub async fn resolve(settings: &AwsSettings, source: &CredentialSource, region: Option<&str>, session_name: &str) -> Result<Self> {
        let regional_builder = || {
            // The app name marks our calls in CloudTrail (and in the test emulator's request log).
            let builder =
                settings.base.to_builder().app_name(aws_config::AppName::new(APP_NAME).expect("valid app name")).timeout_config(call_timeouts());
            match region.filter(|r| !r.is_empty()) {
                Some(region) => builder.region(aws_config::Region::new(region.to_string())),
                None => builder,
            }
        };
        let regional = regional_builder().build();
        let (credentials, expires) = match source {
            CredentialSource::OperatorDefault => return Ok(Self { config: regional, expires: None }),
            CredentialSource::AccessKey { access_key, secret_key, session_token } => {
                (Credentials::new(access_key, secret_key, session_token.clone(), None, "backup-secret"), None)
            }
            CredentialSource::AssumeRole { role_arn } => {
                let sts = aws_sdk_sts::Client::new(&regional);
                let reply = sts
                    .assume_role()
                    .role_arn(role_arn)
                    .role_session_name(session_name)
                    .send()
                    .await
                    .map_err(|e| AwsError::Credentials(format!("AssumeRole {role_arn}: {}", sts_message(e))))?;
                to_credentials(reply.credentials(), "assume-role")?
            }
            CredentialSource::WebIdentity { role_arn, token } => {
                let sts = aws_sdk_sts::Client::new(&regional);
                let reply = sts
                    .assume_role_with_web_identity()
                    .role_arn(role_arn)
                    .role_session_name(session_name)
                    .web_identity_token(token)
                    .send()
                    .await
                    .map_err(|e| AwsError::Credentials(format!("AssumeRoleWithWebIdentity {role_arn}: {}", sts_message(e))))?;
                to_credentials(reply.credentials(), "web-identity")?
            }
        };
        let config = regional_builder().credentials_provider(SharedCredentialsProvider::new(credentials)).build();
        Ok(Self { config, expires })
    }

    /// Still good for at least `margin`.
    pub fn fresh_for(&self, margin: Duration) -> bool {
        self.expires.is_none_or(|at| at > SystemTime::now() + margin)
    }
}

/// Every AWS call ends: a hung connection or answer never holds a pause or a worker.
fn call_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(30))
        .operation_timeout(Duration::from_secs(90))
        .build()
}

fn sts_message<E, R>(err: aws_sdk_sts::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sts::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match AwsError::from_sdk("STS", err) {
        AwsError::Service { code, message, .. } | AwsError::Throttled { code, message, .. } => format!("{code}: {message}"),
        other => other.to_string(),
    }
}

fn to_credentials(credentials: Option<&aws_sdk_sts::types::Credentials>, provider: &'static str) -> Result<(Credentials, Option<SystemTime>)> {
    let c = credentials.ok_or_else(|| AwsError::Credentials("STS returned no credentials".into()))?;
    let expires = SystemTime::try_from(*c.expiration()).ok();
    Ok((Credentials::new(c.access_key_id(), c.secret_access_key(), Some(c.session_token().to_string()), expires, provider), expires))
}

/// STS `RoleSessionName`: 2-64 characters of `[\w+=,.@-]`.
pub fn session_name(namespace: &str, name: &str) -> String {
    let raw = format!("tidb-ebs-backup-{namespace}-{name}");
    let mut cleaned: String = raw.chars().map(|c| if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) { c } else { '-' }).collect();
    cleaned.truncate(64);
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_sts_rules() {
        let name = session_name("ns", &"x".repeat(100));
        assert_eq!(name.len(), 64);
        assert!(name.starts_with("tidb-ebs-backup-ns-"));
        assert_eq!(session_name("a b", "c/d"), "tidb-ebs-backup-a-b-c-d");
    }

    #[test]
    fn debug_never_prints_secrets() {
        let source = CredentialSource::AccessKey { access_key: "AKIAEXAMPLE".into(), secret_key: "very-secret".into(), session_token: None };
        let printed = format!("{source:?}");
        assert!(!printed.contains("very-secret") && !printed.contains("AKIAEXAMPLE"), "{printed}");
    }
}
