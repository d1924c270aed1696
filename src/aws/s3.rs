use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;

use super::{AwsError, MetaStore, Result};

/// Objects under `s3://bucket/prefix/`.
pub struct S3MetaStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3MetaStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: String, prefix: String) -> Self {
        Self { client, bucket, prefix: prefix.trim_matches('/').to_string() }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}/{name}", self.prefix) }
    }
}

fn s3_error<E, R>(operation: &'static str, err: aws_sdk_s3::error::SdkError<E, R>) -> AwsError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    AwsError::from_sdk(operation, err)
}

#[async_trait]
impl MetaStore for S3MetaStore {
    async fn check_bucket(&self) -> Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let not_found = e.raw_response().is_some_and(|r| r.status().as_u16() == 404);
                let err = s3_error("HeadBucket", e);
                if not_found {
                    Err(AwsError::Service {
                        operation: "HeadBucket",
                        code: "NoSuchBucket".into(),
                        message: format!("bucket {} does not exist", self.bucket),
                    })
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn exists(&self, name: &str) -> Result<bool> {
        match self.client.head_object().bucket(&self.bucket).key(self.key(name)).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            Err(e) => Err(s3_error("HeadObject", e)),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.client.get_object().bucket(&self.bucket).key(self.key(name)).send().await {
            Ok(reply) => {
                let bytes = reply.body.collect().await.map_err(|e| AwsError::Transport { operation: "GetObject", message: e.to_string() })?;
                Ok(Some(bytes.to_vec()))
            }
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(s3_error("GetObject", e)),
        }
    }

    async fn put_if_absent(&self, name: &str, body: Vec<u8>) -> Result<bool> {
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .if_none_match("*")
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => Ok(false),
            Err(e) => Err(s3_error("PutObject", e)),
        }
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
            .map(drop)
            .map_err(|e| s3_error("DeleteObject", e))
    }

    fn location(&self) -> String {
        if self.prefix.is_empty() { format!("s3://{}", self.bucket) } else { format!("s3://{}/{}", self.bucket, self.prefix) }
    }
}
