//! The prepare stream over tonic, with the cluster's TLS material when the cluster uses TLS (the same
//! client certificate as for PD).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};

use super::proto::backup_client::BackupClient;
use super::{PrepareRequest, StoreStream, Tikv, TikvError};
use crate::pd::PdTls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct TikvClient {
    tls: Option<PdTls>,
    /// Connect here instead of to each store's own address, which stays the request's authority (the
    /// server tells the stores apart by it): a proxy, or a test stack whose store names do not resolve.
    dial: Option<String>,
}

impl TikvClient {
    pub fn new(tls: Option<PdTls>, dial: Option<String>) -> Self {
        Self { tls, dial }
    }
}

#[async_trait]
impl Tikv for TikvClient {
    async fn open(&self, store: u64, address: &str) -> Result<StoreStream, TikvError> {
        let connect_err = |message: String| TikvError::Connect { store, address: address.to_string(), message };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
            if let Some(dial) = &self.dial {
                // The certificate is the dialled server's.
                config = config.domain_name(dial.rsplit_once(':').map_or(dial.as_str(), |(host, _)| host).to_string());
            }
            endpoint = endpoint.tls_config(config).map_err(|e| connect_err(e.to_string()))?;
        }
        let channel = match &self.dial {
            Some(dial) => endpoint.connect_with_connector(DialTo(dial.clone())).await,
            None => endpoint.connect().await,
        }
        .map_err(|e| connect_err(error_chain(&e)))?;
        let (requests, outgoing) = mpsc::channel::<PrepareRequest>(64);
        let outgoing = futures::stream::unfold(outgoing, next_request);
        // The call resolves once TiKV answers, which it does after the first request: it is awaited by
        // the first read, after the caller has sent its lease.
        let call = async move { BackupClient::new(channel).prepare_snapshot_backup(outgoing).await };
        let responses = futures::stream::once(call)
            .flat_map(|answer| match answer {
                Ok(response) => response.into_inner().boxed(),
                Err(status) => futures::stream::once(async move { Err(status) }).boxed(),
            })
            .boxed();
        Ok(StoreStream { requests, responses })
    }
}

async fn next_request(mut requests: mpsc::Receiver<PrepareRequest>) -> Option<(PrepareRequest, mpsc::Receiver<PrepareRequest>)> {
    requests.recv().await.map(|request| (request, requests))
}

/// Connects every channel to one address (see [`TikvClient::dial`]).
#[derive(Clone)]
struct DialTo(String);

impl tower_service::Service<Uri> for DialTo {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let address = self.0.clone();
        Box::pin(async move {
            let stream = TcpStream::connect(address).await?;
            // Small gRPC frames must not wait for delayed ACKs (tonic sets this on its own connections).
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
