//! Shared helpers for the integration tests that run against the local stack (`tests/harness/up`).
//!
//! A test starts with `let stack = Stack::get();` (or a `Scene`). The stack is shared by every test of
//! the run, and the tests of all suites run in parallel in one process: everything a test makes lives in
//! its own namespace (`stack.unique_namespace(..)`), cluster-scoped objects carry that namespace in their
//! names, and emulator settings go per volume or snapshot.
//!
//! What cannot be made private is guarded by one lock for the whole process:
//! - `exclusive()` for a test that changes what others see: it pauses PD or sets a GC safepoint (any
//!   backup that gets that far), injects or clears emulator faults on actions other tests use, changes
//!   emulator-wide settings, or asserts that PD is exactly as it was;
//! - `shared()` for a test that must not overlap an exclusive one but may overlap other shared ones: it
//!   registers TiKV stores in the stack's PD (any fixture or `Scene`: PD's schedule config gains a store
//!   limit per store, which a backup's before/after comparison sees), makes CreateSnapshots calls (an
//!   exclusive test's faults would take them), or relies on a fault rule of its own surviving
//!   `clear_faults`;
//! - neither for a test that keeps to its own namespace and objects.
//!
//! The emulator's request log is never cleared during a run: filter it by time or by your own volumes.

pub mod e2e;
pub mod emulator;
pub mod fixture;
pub mod node;
pub mod rbac;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::AsyncWriteExt;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use emulator::Emulator;
pub use fixture::TidbClusterFixture;

/// See the module comment: exclusive tests run alone, shared ones alongside each other.
static STACK_LOCK: RwLock<()> = RwLock::const_new(());

/// Holds the stack for this test alone until dropped. The test starts from no faults and no AWS limits,
/// whatever an earlier (perhaps failed) test left.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    let guard = STACK_LOCK.write().await;
    let emulator = Stack::get().emulator();
    emulator.clear_faults().await;
    emulator.set_limits(serde_json::json!({"enabled": false})).await;
    guard
}

/// Keeps exclusive tests away until dropped.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    STACK_LOCK.read().await
}

/// The message for a test run without a stack.
pub const NO_STACK: &str = "HARNESS_ENV is not set: start the stack with tests/harness/up or run the README test command \
     (HARNESS_ENV=<the env file `up` printed> cargo test ...)";

/// promtool, built by `tests/harness/build-tools promtool`: the env file's `PROMTOOL` when `HARNESS_ENV`
/// is set, else the build cache's copy of the version `versions.env` names, so the monitoring tests also
/// run without a stack.
pub fn promtool_bin() -> PathBuf {
    if std::env::var_os("HARNESS_ENV").is_some_and(|p| !p.is_empty())
        && let Some(path) = Stack::get().vars.get("PROMTOOL")
    {
        return path.into();
    }
    let versions_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/harness/versions.env");
    let versions = std::fs::read_to_string(&versions_path).unwrap_or_else(|e| panic!("reading {}: {e}", versions_path.display()));
    let version = versions.lines().find_map(|l| l.strip_prefix("PROMTOOL_VERSION=")).expect("PROMTOOL_VERSION in versions.env");
    let cache = std::env::var_os("TIDB_EBS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/tidb-ebs-backup"));
    let path = cache.join(format!("promtool-v{}/promtool", version.trim()));
    assert!(path.is_file(), "{} is missing: build it with tests/harness/build-tools promtool", path.display());
    path
}

/// What `tests/harness/up` wrote to its env file.
#[derive(Clone, Debug)]
pub struct Stack {
    pub workdir: PathBuf,
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`
    pub kube_apiserver: String,
    /// Holds ca.crt, admin.crt/key, sa.key/pub.
    pub kube_pki: PathBuf,
    pub kubectl_bin: PathBuf,
    pub helm_bin: PathBuf,
    pub aws_endpoint_url: String,
    /// `http://127.0.0.1:<port>/_emulator`
    pub aws_emulator_control: String,
    pub aws_access_key_id: String,
    pub aws_secret_access_key: String,
    pub aws_region: String,
    /// Real pd-server, `http://127.0.0.1:<port>`.
    pub pd_url: String,
    /// fake-tikv's control API.
    pub fake_tikv_control: String,
    /// Every KEY=VALUE of the env file, including ones this struct has no field for.
    pub vars: BTreeMap<String, String>,
}

impl Stack {
    /// The stack named by `HARNESS_ENV`, read once per test binary.
    pub fn get() -> &'static Stack {
        static STACK: OnceLock<Stack> = OnceLock::new();
        STACK.get_or_init(|| {
            let path = std::env::var_os("HARNESS_ENV").filter(|p| !p.is_empty()).unwrap_or_else(|| panic!("{NO_STACK}"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading HARNESS_ENV file {}: {e}; {NO_STACK}", PathBuf::from(&path).display()));
            Stack::parse(&text).unwrap_or_else(|e| panic!("HARNESS_ENV file {}: {e}", PathBuf::from(&path).display()))
        })
    }

    pub fn parse(text: &str) -> Result<Stack, String> {
        let vars: BTreeMap<String, String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            .collect();
        let missing: Vec<&str> = [
            "HARNESS_WORKDIR",
            "KUBECONFIG",
            "KUBE_APISERVER",
            "KUBE_PKI",
            "KUBECTL",
            "HELM",
            "AWS_ENDPOINT_URL",
            "AWS_EMULATOR_CONTROL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "PD_URL",
            "FAKE_TIKV_CONTROL",
        ]
        .into_iter()
        .filter(|k| !vars.contains_key(*k))
        .collect();
        if !missing.is_empty() {
            return Err(format!("missing keys {missing:?}"));
        }
        let v = |k: &str| vars[k].clone();
        let trim = |k: &str| vars[k].trim_end_matches('/').to_string();
        Ok(Stack {
            workdir: v("HARNESS_WORKDIR").into(),
            kubeconfig: v("KUBECONFIG").into(),
            kube_apiserver: trim("KUBE_APISERVER"),
            kube_pki: v("KUBE_PKI").into(),
            kubectl_bin: v("KUBECTL").into(),
            helm_bin: v("HELM").into(),
            aws_endpoint_url: trim("AWS_ENDPOINT_URL"),
            aws_emulator_control: trim("AWS_EMULATOR_CONTROL"),
            aws_access_key_id: v("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key: v("AWS_SECRET_ACCESS_KEY"),
            aws_region: v("AWS_REGION"),
            pd_url: trim("PD_URL"),
            fake_tikv_control: trim("FAKE_TIKV_CONTROL"),
            vars,
        })
    }

    // ---- Kubernetes --------------------------------------------------------------------------------

    /// A fresh admin client (a client's connection pool belongs to the runtime that made it, and every
    /// `#[tokio::test]` has its own runtime, so clients are not shared between tests).
    /// Where the operator reaches the stack's TiKV stores (their in-cluster names do not resolve here):
    /// the PD emulator serves them on its own gRPC port.
    pub fn tikv_dial_address(&self) -> String {
        self.pd_url.split_once("://").map_or(self.pd_url.as_str(), |(_, rest)| rest).trim_end_matches('/').to_string()
    }

    pub async fn kube_client(&self) -> kube::Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", self.kubeconfig.display()));
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", self.kubeconfig.display()));
        kube::Client::try_from(config).expect("kube client from the harness kubeconfig")
    }

    /// A kubeconfig at `WORKDIR/<name>.kubeconfig` that authenticates with `token`, as a pod's mounted
    /// ServiceAccount token would, and a client that uses it.
    pub async fn token_kubeconfig(&self, name: &str, token: &str) -> (PathBuf, kube::Client) {
        let path = self.workdir.join(format!("{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: sa}}\ncurrent-context: c\n",
            self.kube_apiserver,
            self.kube_pki.join("ca.crt").display()
        );
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        let kubeconfig = Kubeconfig::from_yaml(&text).expect("token kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("token kubeconfig");
        (path, kube::Client::try_from(config).expect("kube client from a token"))
    }

    /// A token for a ServiceAccount (TokenRequest, one hour), as the kubelet would mount it.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(self.kube_client().await, namespace);
        let request =
            TokenRequest { spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(3600), ..Default::default() }, ..Default::default() };
        let status = accounts.create_token_request(name, &PostParams::default(), &request).await.expect("TokenRequest").status;
        status.expect("TokenRequest status").token
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        let path = self.kube_pki.join("ca.crt");
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// reqwest client that trusts the apiserver's CA but presents no client certificate.
    pub fn apiserver_http_anonymous(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem()).expect("CA PEM");
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client")
    }

    /// Creates a namespace `<prefix>-<8 hex>` (label `tidb-ebs-backup.test/prefix=<prefix>`) and returns its
    /// name. Tests leave their namespaces; the stack is thrown away after the run.
    pub async fn unique_namespace(&self, prefix: &str) -> String {
        let client = self.kube_client().await;
        create_unique_namespace(&client, prefix).await
    }

    /// Creates `name` if it does not exist yet (AlreadyExists is fine).
    pub async fn ensure_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.kube_client().await);
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("creating namespace {name}: {e}"),
        }
    }

    /// Runs kubectl with the harness kubeconfig.
    pub async fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_with_stdin(args, None).await
    }

    /// Runs kubectl with the harness kubeconfig, feeding `stdin` (e.g. for `apply -f -`).
    pub async fn kubectl_with_stdin<I, S>(&self, args: I, stdin: Option<&str>) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = tokio::process::Command::new(&self.kubectl_bin);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        run(cmd, stdin).await
    }

    /// Runs helm with the harness kubeconfig.
    pub async fn helm<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = tokio::process::Command::new(&self.helm_bin);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        run(cmd, None).await
    }

    // ---- AWS emulator ------------------------------------------------------------------------------

    /// SDK config pointing at the emulator with the harness's static credentials and region.
    pub async fn aws_config(&self) -> aws_config::SdkConfig {
        let credentials = aws_credential_types::Credentials::new(
            self.aws_access_key_id.clone(),
            self.aws_secret_access_key.clone(),
            None,
            None,
            "tidb-ebs-backup-harness",
        );
        tidb_ebs_backup::aws::config_loader()
            .endpoint_url(&self.aws_endpoint_url)
            .credentials_provider(credentials)
            .region(aws_config::Region::new(self.aws_region.clone()))
            .load()
            .await
    }

    pub async fn ec2_client(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.aws_config().await)
    }

    /// EC2 client that surfaces the first error (no SDK retries), for fault-injection tests.
    pub async fn ec2_client_without_retries(&self) -> aws_sdk_ec2::Client {
        let conf = aws_sdk_ec2::config::Builder::from(&self.aws_config().await)
            .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }

    pub async fn ebs_client(&self) -> aws_sdk_ebs::Client {
        aws_sdk_ebs::Client::new(&self.aws_config().await)
    }

    pub async fn s3_client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::from(&self.aws_config().await).force_path_style(true).build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Creates `bucket` in the harness region (outside us-east-1 S3 needs the location constraint).
    pub async fn create_bucket(&self, bucket: &str) {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        let config = CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::from(self.aws_region.as_str())).build();
        self.s3_client()
            .await
            .create_bucket()
            .bucket(bucket)
            .create_bucket_configuration(config)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateBucket {bucket}: {e:?}"));
    }

    /// The emulator's control API (`AWS_EMULATOR_CONTROL`).
    pub fn emulator(&self) -> Emulator {
        Emulator::new(&self.aws_emulator_control)
    }

    // ---- PD / fake-tikv ----------------------------------------------------------------------------

    /// `GET {PD_URL}/pd/api/v1/{path}` as JSON; panics on a non-2xx answer.
    pub async fn pd_get(&self, path: &str) -> serde_json::Value {
        let url = format!("{}/pd/api/v1/{}", self.pd_url, path.trim_start_matches('/'));
        let response = http().get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        json_or_panic("GET", &url, response).await
    }

    /// `POST {PD_URL}/pd/api/v1/{path}` with a JSON body; returns the status and the body text.
    pub async fn pd_post(&self, path: &str, body: &serde_json::Value) -> (reqwest::StatusCode, String) {
        let url = format!("{}/pd/api/v1/{}", self.pd_url, path.trim_start_matches('/'));
        let response = http().post(&url).json(body).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }

    /// The crate's PD client for the harness PD.
    pub fn pd_client(&self) -> tidb_ebs_backup::pd::PdClient {
        tidb_ebs_backup::pd::PdClient::new(tidb_ebs_backup::pd::PdEndpoint { url: self.pd_url.clone(), tls: None }).expect("PD client")
    }

    /// The stores among `ids` that the PD emulator's TiKV side holds prepared for a snapshot backup now
    /// (fake-tikv, beside a real pd-server, serves no prepare stream: none).
    pub async fn prepared_stores(&self, ids: &[u64]) -> Vec<u64> {
        let mut prepared = Vec::new();
        for id in ids {
            let url = format!("{}/tikv/stores/{id}/prepare", self.fake_tikv_control);
            let Ok(response) = http().get(&url).send().await else { continue };
            let state: serde_json::Value = response.json().await.unwrap_or_default();
            if state["prepared"].as_bool() == Some(true) {
                prepared.push(*id);
            }
        }
        prepared
    }

    /// Registers `stores` fake TiKV stores for `<namespace>/<name>` (idempotent per cluster and index).
    pub async fn register_tikv_stores(&self, namespace: &str, name: &str, stores: usize) -> Vec<FakeStore> {
        let url = format!("{}/clusters", self.fake_tikv_control);
        let body = serde_json::json!({"name": name, "namespace": namespace, "stores": stores});
        let response = http().post(&url).json(&body).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let value = json_or_panic("POST", &url, response).await;
        serde_json::from_value(value["stores"].clone()).unwrap_or_else(|e| panic!("fake-tikv answer {value}: {e}"))
    }
}

/// One store as fake-tikv reports it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct FakeStore {
    pub id: u64,
    pub address: String,
    pub pod: String,
}

pub async fn create_unique_namespace(client: &kube::Client, prefix: &str) -> String {
    let mut clean: String = prefix.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    clean.truncate(40);
    let clean = clean.trim_matches('-').to_string();
    let clean = if clean.is_empty() { "t".to_string() } else { clean };
    let api: Api<Namespace> = Api::all(client.clone());
    loop {
        let name = format!("{clean}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"tidb-ebs-backup.test/prefix": clean}}
        }))
        .unwrap();
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => return name,
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => panic!("creating namespace {name}: {e}"),
        }
    }
}

/// A plain HTTP client (new per call: see `Stack::kube_client`).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("reqwest client")
}

pub async fn json_or_panic(method: &str, url: &str, response: reqwest::Response) -> serde_json::Value {
    let status = response.status();
    let text = response.text().await.unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"));
    assert!(status.is_success(), "{method} {url}: {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {url}: not JSON ({e}): {text}"))
}

async fn run(mut cmd: tokio::process::Command, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let described = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {described}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes()).await.unwrap_or_else(|e| panic!("writing stdin of {described}: {e}"));
        drop(pipe);
    }
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{described} did not finish within 120 s"))
        .unwrap_or_else(|e| panic!("waiting for {described}: {e}"))
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn describe_output(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Decodes unpadded or padded base64url (JWT segments).
pub fn base64url_decode(input: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in input.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return Err(format!("invalid base64url character {:?}", c as char)),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// The claims (payload) of a JWT, unverified.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three dot-separated parts: {token}");
    let payload = base64url_decode(parts[1]).unwrap_or_else(|e| panic!("JWT payload: {e}"));
    serde_json::from_slice(&payload).unwrap_or_else(|e| panic!("JWT payload is not JSON: {e}"))
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips_known_values() {
        assert_eq!(base64url_decode("eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
        assert_eq!(base64url_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64url_decode("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(base64url_decode("_-8").unwrap(), vec![0xff, 0xef]);
    }

    #[test]
    fn env_file_parses_and_reports_missing_keys() {
        let err = Stack::parse("KUBECONFIG=/x\n").unwrap_err();
        assert!(err.contains("KUBE_APISERVER"), "{err}");
    }
}
