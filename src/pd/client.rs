use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::proto::{self, pd_client::PdClient as GrpcClient};
use super::{GcSafepoints, MinResolvedTs, Pd, PdError, Region, Result, SafepointUpdate, ServiceSafepoint, Store};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Client certificates for a TidbCluster with `spec.tlsCluster.enabled` (`<cluster>-cluster-client-secret`).
#[derive(Clone)]
pub struct PdTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for PdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PdTls { .. }")
    }
}

#[derive(Clone, Debug)]
pub struct PdEndpoint {
    /// `http://host:2379` or `https://host:2379` (HTTP API and gRPC share the port).
    pub url: String,
    pub tls: Option<PdTls>,
}

pub struct PdClient {
    endpoint: PdEndpoint,
    http: reqwest::Client,
}

impl PdClient {
    pub fn new(mut endpoint: PdEndpoint) -> Result<Self> {
        endpoint.url = endpoint.url.trim_end_matches('/').to_string();
        if endpoint.tls.is_some() && endpoint.url.starts_with("http://") {
            endpoint.url = endpoint.url.replacen("http://", "https://", 1);
        }
        let mut builder = reqwest::Client::builder().timeout(TIMEOUT).connect_timeout(Duration::from_secs(5));
        if let Some(tls) = &endpoint.tls {
            let ca = reqwest::Certificate::from_pem(&tls.ca_pem).map_err(|e| PdError::Tls(e.to_string()))?;
            let mut pem = tls.cert_pem.clone();
            pem.extend_from_slice(b"\n");
            pem.extend_from_slice(&tls.key_pem);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| PdError::Tls(e.to_string()))?;
            builder = builder.add_root_certificate(ca).identity(identity).tls_built_in_root_certs(false);
        }
        let http = builder.build().map_err(|e| PdError::Tls(e.to_string()))?;
        Ok(Self { endpoint, http })
    }

    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    async fn request(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}/pd/api/v1/{path}", self.endpoint.url);
        let what = format!("{method} /pd/api/v1/{path}");
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|source| PdError::Unreachable { url: self.endpoint.url.clone(), source })?;
        let status = response.status();
        let text = response.text().await.map_err(|source| PdError::Unreachable { url: self.endpoint.url.clone(), source })?;
        if !status.is_success() {
            return Err(PdError::Status { what, status: status.as_u16(), body: text.trim().to_string() });
        }
        serde_json::from_str(&text).map_err(|e| PdError::Decode { what, detail: format!("{e}: {}", text.trim()) })
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.request(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    async fn channel(&self, url: &str) -> Result<Channel> {
        let connect_err = |source| PdError::Connect { url: url.to_string(), source };
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| PdError::Tls(format!("bad PD URL {url}: {e}")))?
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.endpoint.tls {
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
            endpoint = endpoint.tls_config(config).map_err(connect_err)?;
        }
        endpoint.connect().await.map_err(connect_err)
    }

    /// The leader's gRPC client and the cluster id (every PD RPC but GetMembers must carry it).
    async fn leader(&self) -> Result<(GrpcClient<Channel>, u64)> {
        let mut any = GrpcClient::new(self.channel(&self.endpoint.url).await?);
        let members = any
            .get_members(proto::GetMembersRequest { header: Some(proto::RequestHeader::default()) })
            .await
            .map_err(|source| PdError::Grpc { what: "GetMembers".into(), source })?
            .into_inner();
        let cluster_id = members.header.as_ref().map_or(0, |h| h.cluster_id);
        let leader_url = members.leader.and_then(|l| l.client_urls.into_iter().next());
        let leader = match leader_url {
            Some(url) if url.trim_end_matches('/') != self.endpoint.url => match self.channel(&url).await {
                Ok(channel) => GrpcClient::new(channel),
                // The advertised URL may not resolve from here (e.g. a port-forward); the Service may still reach it.
                Err(_) => any,
            },
            _ => any,
        };
        Ok((leader, cluster_id))
    }
}

fn header_error(what: &str, header: Option<&proto::ResponseHeader>) -> Result<()> {
    match header.and_then(|h| h.error.as_ref()) {
        Some(error) if error.r#type != proto::ErrorType::Ok as i32 => Err(PdError::Header {
            what: what.into(),
            kind: proto::ErrorType::try_from(error.r#type).map_or("UNKNOWN".into(), |t| t.as_str_name().into()),
            message: error.message.clone(),
        }),
        _ => Ok(()),
    }
}

fn decode_err(what: &str, value: &Value) -> PdError {
    PdError::Decode { what: what.into(), detail: value.to_string() }
}

fn string_list(what: &str, value: Value) -> Result<Vec<String>> {
    match value {
        Value::Null => Ok(vec![]),
        Value::Array(items) => items.into_iter().map(|v| v.as_str().map(str::to_string).ok_or_else(|| decode_err(what, &v))).collect(),
        other => Err(decode_err(what, &other)),
    }
}

fn parse_store(entry: &Value) -> Option<Store> {
    let store = &entry["store"];
    Some(Store {
        id: store["id"].as_u64()?,
        address: store["address"].as_str().unwrap_or_default().to_string(),
        state_name: store["state_name"].as_str().unwrap_or("Up").to_string(),
        version: store["version"].as_str().unwrap_or_default().to_string(),
        labels: store["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| Some((l["key"].as_str()?.to_string(), l["value"].as_str()?.to_string())))
            .collect(),
    })
}

/// PD's region keys are upper-case hex of the encoded key (`""` for the ends of the keyspace).
fn hex_key(value: &Value) -> Option<Vec<u8>> {
    let text = value.as_str().unwrap_or("");
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

fn parse_region(value: &Value) -> Option<Region> {
    let peers = value["peers"].as_array().into_iter().flatten().filter_map(|p| Some((p["id"].as_u64()?, p["store_id"].as_u64()?))).collect();
    Some(Region {
        id: value["id"].as_u64()?,
        start_key: hex_key(&value["start_key"])?,
        end_key: hex_key(&value["end_key"])?,
        conf_ver: value["epoch"]["conf_ver"].as_u64().unwrap_or(0),
        version: value["epoch"]["version"].as_u64().unwrap_or(0),
        peers,
        leader_store: value["leader"]["store_id"].as_u64(),
    })
}

#[async_trait]
impl Pd for PdClient {
    async fn regions(&self) -> Result<Vec<Region>> {
        let value = self.get("regions").await?;
        let list = value["regions"].as_array().ok_or_else(|| decode_err("regions", &value))?;
        list.iter().map(|r| parse_region(r).ok_or_else(|| decode_err("region", r))).collect()
    }

    async fn cluster_version(&self) -> Result<String> {
        let value = self.get("config/cluster-version").await?;
        let version = value.as_str().ok_or_else(|| decode_err("cluster-version", &value))?;
        Ok(version.trim_start_matches('v').to_string())
    }

    async fn stores(&self) -> Result<Vec<Store>> {
        let value = self.get("stores").await?;
        value["stores"]
            .as_array()
            .map(|stores| stores.iter().filter_map(parse_store).collect())
            .ok_or_else(|| decode_err("stores", &value))
    }

    async fn schedulers(&self) -> Result<Vec<String>> {
        string_list("schedulers", self.get("schedulers").await?)
    }

    async fn paused_schedulers(&self) -> Result<Vec<String>> {
        string_list("paused schedulers", self.get("schedulers?status=paused").await?)
    }

    async fn pause_scheduler(&self, name: &str, delay_seconds: u64) -> Result<()> {
        self.post(&format!("schedulers/{name}"), &json!({"delay": delay_seconds})).await.map(drop)
    }

    async fn schedule_config(&self) -> Result<Map<String, Value>> {
        match self.get("config/schedule").await? {
            Value::Object(map) => Ok(map),
            other => Err(decode_err("config/schedule", &other)),
        }
    }

    async fn set_config_with_ttl(&self, values: &Map<String, Value>, ttl_seconds: u64) -> Result<()> {
        self.post(&format!("config?ttlSecond={ttl_seconds}"), &Value::Object(values.clone())).await.map(drop)
    }

    async fn operators(&self) -> Result<Vec<String>> {
        string_list("operators", self.get("operators").await?)
    }

    async fn min_resolved_ts(&self) -> Result<MinResolvedTs> {
        let value = self.get("min-resolved-ts").await?;
        let ts = value["min_resolved_ts"].as_u64().ok_or_else(|| decode_err("min-resolved-ts", &value))?;
        Ok(MinResolvedTs { ts, is_real_time: value["is_real_time"].as_bool().unwrap_or(false) })
    }

    async fn update_service_safepoint(&self, service_id: &str, ttl_seconds: i64, safe_point: u64) -> Result<SafepointUpdate> {
        let what = "UpdateServiceGCSafePoint";
        let (mut leader, cluster_id) = self.leader().await?;
        let reply = leader
            .update_service_gc_safe_point(proto::UpdateServiceGcSafePointRequest {
                header: Some(proto::RequestHeader { cluster_id, sender_id: 0 }),
                service_id: service_id.as_bytes().to_vec(),
                ttl: ttl_seconds,
                safe_point,
            })
            .await
            .map_err(|source| PdError::Grpc { what: what.into(), source })?
            .into_inner();
        header_error(what, reply.header.as_ref())?;
        Ok(SafepointUpdate { min_service_id: String::from_utf8_lossy(&reply.service_id).into_owned(), min_safe_point: reply.min_safe_point })
    }

    async fn gc_safepoints(&self) -> Result<GcSafepoints> {
        let value = self.get("gc/safepoint").await?;
        let service_safe_points = value["service_gc_safe_points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|sp| {
                Some(ServiceSafepoint {
                    service_id: sp["service_id"].as_str()?.to_string(),
                    expired_at: sp["expired_at"].as_i64().unwrap_or(0),
                    safe_point: sp["safe_point"].as_u64().unwrap_or(0),
                })
            })
            .collect();
        Ok(GcSafepoints { gc_safe_point: value["gc_safe_point"].as_u64().unwrap_or(0), service_safe_points })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pd_store_entries() {
        let entry = json!({"store": {"id": 4, "address": "basic-tikv-0.basic-tikv-peer.ns.svc:20160", "version": "8.5.5",
            "labels": [{"key": "engine", "value": "tiflash"}], "state_name": "Up"}, "status": {}});
        let store = parse_store(&entry).unwrap();
        assert_eq!(store.id, 4);
        assert!(store.is_tiflash());
        assert_eq!(parse_store(&json!({"store": {}})), None);
    }

    #[test]
    fn header_errors_are_surfaced() {
        let header = proto::ResponseHeader {
            cluster_id: 1,
            error: Some(proto::Error { r#type: proto::ErrorType::NotBootstrapped as i32, message: "not yet".into() }),
        };
        let err = header_error("x", Some(&header)).unwrap_err();
        assert!(err.to_string().contains("NOT_BOOTSTRAPPED"), "{err}");
        assert!(header_error("x", Some(&proto::ResponseHeader::default())).is_ok());
    }
}
