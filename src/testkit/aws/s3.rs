//! S3 buckets of objects. A `FakeMetaStore` is one Backup's view: its bucket and prefix, as
//! `S3MetaStore` is. A bucket that does not exist answers `NoSuchBucket`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{AwsCall, AwsFault, Gate, Operation, answer, service_error};
use crate::aws::{MetaStore, Result};
use crate::testkit::faults::Times;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Method {
    CheckBucket,
    Exists,
    Get,
    PutIfAbsent,
    Delete,
}

impl Operation for S3Method {
    fn operation(self) -> &'static str {
        match self {
            Self::CheckBucket => "HeadBucket",
            Self::Exists => "HeadObject",
            Self::Get => "GetObject",
            Self::PutIfAbsent => "PutObject",
            Self::Delete => "DeleteObject",
        }
    }
}

type Buckets = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

#[derive(Clone, Default)]
pub struct FakeS3 {
    buckets: Arc<Mutex<Buckets>>,
    gate: Gate<S3Method>,
}

impl FakeS3 {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Buckets> {
        self.buckets.lock().expect("fake S3 state")
    }

    pub fn add_bucket(&self, bucket: &str) {
        self.lock().entry(bucket.into()).or_default();
    }

    /// The view a Backup with this bucket and prefix gets.
    pub fn store(&self, bucket: &str, prefix: &str) -> FakeMetaStore {
        FakeMetaStore { s3: self.clone(), bucket: bucket.into(), prefix: prefix.trim_matches('/').into() }
    }

    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.lock().get(bucket)?.get(key).cloned()
    }

    pub fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) {
        self.lock().entry(bucket.into()).or_default().insert(key.into(), body);
    }

    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.lock().get(bucket).map(|objects| objects.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn fail(&self, method: S3Method, times: Times, fault: AwsFault) {
        self.gate.fail(method, times, fault);
    }

    /// As `fail`, for calls on keys containing `key` (`b1/backupmeta`).
    pub fn fail_where(&self, method: S3Method, key: &str, times: Times, fault: AwsFault) {
        self.gate.fail_where(method, key, times, fault);
    }

    pub fn calls(&self) -> Vec<AwsCall<S3Method>> {
        self.gate.calls()
    }
}

pub struct FakeMetaStore {
    s3: FakeS3,
    bucket: String,
    prefix: String,
}

impl FakeMetaStore {
    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}/{name}", self.prefix) }
    }

    /// Logs and gates the call, then runs `f` on the bucket's objects (or answers NoSuchBucket).
    async fn with_bucket<T>(&self, method: S3Method, name: &str, f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>, String) -> T) -> Result<T> {
        let key = self.key(name);
        let lost = self.s3.gate.enter(method, format!("{}/{key}", self.bucket)).await?;
        let mut buckets = self.s3.lock();
        let objects = buckets
            .get_mut(&self.bucket)
            .ok_or_else(|| service_error(method.operation(), "NoSuchBucket", format!("bucket {} does not exist", self.bucket)))?;
        let value = f(objects, key);
        answer(lost, value)
    }
}

#[async_trait]
impl MetaStore for FakeMetaStore {
    async fn check_bucket(&self) -> Result<()> {
        self.with_bucket(S3Method::CheckBucket, "", |_, _| ()).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.with_bucket(S3Method::Exists, key, |objects, key| objects.contains_key(&key)).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.with_bucket(S3Method::Get, key, |objects, key| objects.get(&key).cloned()).await
    }

    async fn put_if_absent(&self, key: &str, body: Vec<u8>) -> Result<bool> {
        self.with_bucket(S3Method::PutIfAbsent, key, |objects, key| match objects.entry(key) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(body);
                true
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.with_bucket(S3Method::Delete, key, |objects, key| {
            objects.remove(&key);
        })
        .await
    }

    fn location(&self) -> String {
        if self.prefix.is_empty() { format!("s3://{}", self.bucket) } else { format!("s3://{}/{}", self.bucket, self.prefix) }
    }
}
