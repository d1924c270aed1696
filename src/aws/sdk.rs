//! Where every AWS SDK config of the operator (and of its tests) starts: a pinned behaviour version and
//! an HTTPS client on rustls with ring.

use aws_config::{BehaviorVersion, ConfigLoader};
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_http_client::{Builder, ConnectorBuilder};

/// The SDK's defaults (retries, timeouts, stalled-stream protection, ...) as of this version, the newest
/// the locked SDK has. `BehaviorVersion::latest()` would move them with a `cargo update`, under code that
/// is tuned to them (the timeouts in `credentials.rs`, the throttling and retries in `ec2.rs`); move it on
/// purpose, after reading what the new version changes.
pub fn behavior_version() -> BehaviorVersion {
    BehaviorVersion::v2026_01_12()
}

/// `aws_config::defaults` with the pinned behaviour version and the HTTPS client the SDK's
/// `default-https-client` would build (hyper, rustls, the platform's root certificates, `HTTPS_PROXY` /
/// `NO_PROXY` from the environment as that version does), but on ring: the crypto provider kube, reqwest
/// and tonic use. With aws-lc as well, the build would compile aws-lc-sys (slow, needs cmake) and rustls
/// could not pick a provider by itself.
pub fn config_loader() -> ConfigLoader {
    let https = Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    });
    aws_config::defaults(behavior_version()).http_client(https)
}

#[cfg(test)]
mod tests {
    use aws_credential_types::Credentials;
    use aws_smithy_types::error::display::DisplayErrorContext;

    use super::*;

    /// Nothing listens on the port: the call fails to connect, having built the TLS client (no panic for
    /// want of a crypto provider, no "no HTTP client" error).
    #[tokio::test]
    async fn the_sdk_client_speaks_https_on_ring() {
        let config = config_loader()
            .endpoint_url("https://127.0.0.1:1")
            .region(aws_config::Region::new("us-west-2"))
            .credentials_provider(Credentials::new("a", "b", None, None, "test"))
            .load()
            .await;
        let err = aws_sdk_sts::Client::new(&config).get_caller_identity().send().await.expect_err("nothing listens");
        let text = DisplayErrorContext(&err).to_string();
        assert!(matches!(err, aws_sdk_sts::error::SdkError::DispatchFailure(_)), "{text}");
        assert!(text.contains("onnect"), "a connection error: {text}");
    }

    /// rustls picks its process-wide provider by itself only when exactly one is compiled in: ring alone.
    #[test]
    fn rustls_has_one_crypto_provider() {
        let _ = rustls::ClientConfig::builder();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
