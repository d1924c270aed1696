//! The AWS emulator's JSON control API (`AWS_EMULATOR_CONTROL`, see tests/harness/aws-emulator).
//!
//! Settings here are global to the emulator, and tests run in parallel: prefer the per-volume and
//! per-snapshot settings; a test that sets anything emulator-wide or adds fault rules on actions others
//! use holds `support::exclusive()` (see `support`). The request log is never emptied: filter it.

use serde_json::{Value, json};

use super::{http, json_or_panic};

#[derive(Clone, Debug)]
pub struct Emulator {
    base: String,
    http: reqwest::Client,
}

impl Emulator {
    pub fn new(control_url: &str) -> Self {
        Self { base: control_url.trim_end_matches('/').to_string(), http: http() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        json_or_panic(method.as_str(), &url, response).await
    }

    pub async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Value {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// How long new snapshots stay `pending` (global default; per-volume settings win).
    /// Back to a fresh emulator: moto's state and all of ours.
    #[allow(dead_code)] // the pause benchmark's, between sizes
    pub async fn reset(&self) {
        self.post("reset", &json!({})).await;
    }

    #[allow(dead_code)] // the pause benchmark's
    pub async fn limits(&self) -> Value {
        self.get("limits").await
    }

    /// Switches AWS's limits on or off and tunes them (see the emulator's README).
    pub async fn set_limits(&self, body: Value) -> Value {
        self.post("limits", &body).await
    }

    pub async fn set_snapshot_pending_seconds(&self, seconds: f64) -> Value {
        self.post("config", &json!({"snapshot_pending_seconds": seconds})).await
    }

    /// Per-volume snapshot behaviour: `pending_seconds` and/or `end_state` ("completed" | "error").
    pub async fn configure_volume(&self, volume_id: &str, settings: Value) -> Value {
        self.post(&format!("volumes/{volume_id}"), &settings).await
    }

    /// Sets how long snapshots of `volume_id` stay pending and how they end.
    pub async fn set_volume_snapshot_behaviour(&self, volume_id: &str, pending_seconds: f64, end_state: &str) -> Value {
        self.configure_volume(volume_id, json!({"pending_seconds": pending_seconds, "end_state": end_state})).await
    }

    /// Changes the volume's written blocks. Body keys: `count` (blocks 0..count written), `blocks`
    /// (exact list of indexes or [index, token] pairs), `write` (indexes to overwrite), `write_range`
    /// ([lo, hi)), `trim` (indexes to unwrite). Snapshots capture the map at creation.
    pub async fn set_volume_blocks(&self, volume_id: &str, body: Value) -> Value {
        self.post(&format!("volumes/{volume_id}/blocks"), &body).await
    }

    /// Overrides one snapshot: `{"state": "completed"|"error"}` ends it now, `{"pending_seconds": n}`
    /// keeps it pending n more seconds.
    pub async fn set_snapshot(&self, snapshot_id: &str, body: Value) -> Value {
        self.post(&format!("snapshots/{snapshot_id}"), &body).await
    }

    pub async fn complete_snapshot(&self, snapshot_id: &str) -> Value {
        self.set_snapshot(snapshot_id, json!({"state": "completed"})).await
    }

    /// Adds a fault rule; returns it with its `id`. Keys: service, action (string or list), method,
    /// path (regex), status, code, message, reason, style, delay_ms, times (-1 = forever).
    pub async fn add_fault(&self, rule: Value) -> Value {
        let reply = self.post("faults", &rule).await;
        reply["rules"][0].clone()
    }

    /// Adds several rules at once; returns them with their ids.
    pub async fn add_faults(&self, rules: Vec<Value>) -> Vec<Value> {
        let reply = self.post("faults", &json!({"rules": rules})).await;
        reply["rules"].as_array().cloned().unwrap_or_default()
    }

    pub async fn faults(&self) -> Vec<Value> {
        self.get("faults").await["rules"].as_array().cloned().unwrap_or_default()
    }

    pub async fn remove_fault(&self, id: u64) {
        self.delete(&format!("faults/{id}")).await;
    }

    /// Removes every fault rule (also other tests' ones).
    pub async fn clear_faults(&self) {
        self.delete("faults").await;
    }

    /// Logged AWS requests with this action (all when `None`), oldest first. Entries have time, service,
    /// region, action, method, path, injected, status, duration_ms, error_code, volume_ids, snapshot_ids.
    pub async fn requests(&self, action: Option<&str>) -> Vec<Value> {
        let mut query = vec![];
        if let Some(action) = action {
            query.push(("action", action.to_string()));
        }
        self.requests_where(&query).await
    }

    /// Logged requests filtered by `action`, `service`, `error_code` and/or `since` (epoch seconds).
    pub async fn requests_where(&self, query: &[(&str, String)]) -> Vec<Value> {
        let url = format!("{}/requests", self.base);
        let response = self.http.get(&url).query(query).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let value = json_or_panic("GET", &url, response).await;
        value["requests"].as_array().cloned().unwrap_or_default()
    }

    /// Logged requests with this action from `since` (an `Emulator::now()` taken before) on.
    pub async fn requests_since(&self, action: &str, since: f64) -> Vec<Value> {
        self.requests_where(&[("action", action.to_string()), ("since", since.to_string())]).await
    }

    /// Now in the request log's time (epoch seconds; the emulator runs on this machine).
    pub fn now() -> f64 {
        jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
    }
}
