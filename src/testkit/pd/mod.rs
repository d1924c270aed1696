//! PD in memory, behaving as `tests/harness/pd/OBSERVED.md` records PD v8.5.5: scheduler pauses and
//! schedule-config overrides that lapse after their TTL, service GC safepoints with TTLs (PD keeps a
//! request below the minimum unsaved and always answers with the minimum), stores, operators and the
//! min resolved ts. TTLs run on `tokio::time::Instant`, so a test under `tokio::time::pause()` can
//! `advance` past them.

mod state;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::faults::Times;
use crate::pd::{GcSafepoints, MinResolvedTs, PAUSED_CONFIG, Pd, PdError, Result, SafepointUpdate, ServiceSafepoint, Store};
use state::{DEFAULT_SCHEDULERS, GC_WORKER, State};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PdMethod {
    ClusterVersion,
    Stores,
    Schedulers,
    PausedSchedulers,
    PauseScheduler,
    ScheduleConfig,
    SetConfigWithTtl,
    Operators,
    MinResolvedTs,
    UpdateServiceSafepoint,
    GcSafepoints,
    Regions,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PdFault {
    /// PD answers this HTTP status (`PdError::Status`); nothing is done.
    Status(u16),
    /// PD cannot be reached (`PdError::Connect`, reason `PDUnreachable`); nothing is done.
    Unreachable,
    /// The call waits this long, then is served.
    Delay(Duration),
}

/// One call as PD saw it, with its arguments in words (`balance-leader-scheduler 30`), and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PdCall {
    pub method: PdMethod,
    pub detail: String,
    pub at: std::time::Instant,
    /// The TTL a pause call (scheduler, config override, service safepoint) gave; 0 undoes it.
    pub ttl_seconds: Option<i64>,
}

impl PdCall {
    /// A call that pauses (or keeps paused) scheduling or GC.
    pub fn pauses(&self) -> bool {
        self.ttl_seconds.is_some_and(|ttl| ttl > 0)
    }

    /// A call that undoes part of a pause.
    pub fn undoes(&self) -> bool {
        self.ttl_seconds == Some(0)
    }
}

#[derive(Clone)]
pub struct FakePd {
    state: Arc<Mutex<State>>,
}

impl Default for FakePd {
    fn default() -> Self {
        Self::new()
    }
}

impl FakePd {
    /// PD 8.5.5 with its five default schedulers, no stores, GC at 0 and a real-time resolved ts of now.
    pub fn new() -> Self {
        Self { state: Arc::new(Mutex::new(State::new())) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().expect("fake PD state");
        state.expire(Instant::now());
        state
    }

    pub fn add_store(&self, store: Store) {
        self.lock().stores.push(store);
    }

    pub fn set_store_state(&self, id: u64, state_name: &str) {
        self.lock().stores.iter_mut().filter(|s| s.id == id).for_each(|s| s.state_name = state_name.into());
    }

    pub fn set_store_version(&self, id: u64, version: &str) {
        self.lock().stores.iter_mut().filter(|s| s.id == id).for_each(|s| s.version = version.into());
    }

    pub fn set_version(&self, version: &str) {
        self.lock().version = version.into();
    }

    /// Operators PD reports as running (scheduling is not quiet while there are any).
    pub fn set_operators(&self, operators: &[&str]) {
        self.lock().operators = operators.iter().map(|o| o.to_string()).collect();
    }

    pub fn set_min_resolved_ts(&self, ts: u64, is_real_time: bool) {
        self.lock().min_resolved_ts = MinResolvedTs { ts, is_real_time };
    }

    pub fn set_gc_safe_point(&self, safe_point: u64) {
        self.lock().gc_safe_point = safe_point;
    }

    pub fn fail(&self, method: PdMethod, times: Times, fault: PdFault) {
        self.lock().faults.add(method, times, fault);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub fn calls(&self) -> Vec<PdCall> {
        self.lock().calls.clone()
    }

    pub fn calls_of(&self, method: PdMethod) -> Vec<PdCall> {
        self.calls().into_iter().filter(|c| c.method == method).collect()
    }

    /// Whether any scheduler pause or schedule-config override is in force now.
    pub fn is_paused(&self) -> bool {
        let state = self.lock();
        state.schedulers.values().any(Option::is_some) || !state.overrides.is_empty()
    }

    /// The schedulers paused now (the trait's `paused_schedulers` is the same, as PD answers it).
    pub fn paused_scheduler_names(&self) -> Vec<String> {
        self.lock().schedulers.iter().filter(|(_, until)| until.is_some()).map(|(name, _)| name.clone()).collect()
    }

    /// The schedule-config override of a dotted key in force now.
    pub fn config_override(&self, key: &str) -> Option<Value> {
        self.lock().overrides.get(key).map(|(value, _)| value.clone())
    }

    /// `service_id`'s GC safepoint, unless it expired or was removed.
    pub fn safepoint(&self, service_id: &str) -> Option<u64> {
        self.lock().safepoints.get(service_id).map(|(sp, _)| *sp)
    }

    /// Logs the call, then applies the fault planned for it (a delay first waits, then lets it through).
    async fn enter(&self, method: PdMethod, detail: String) -> Result<()> {
        self.enter_with_ttl(method, detail, None).await
    }

    async fn enter_with_ttl(&self, method: PdMethod, detail: String, ttl_seconds: Option<i64>) -> Result<()> {
        let fault = {
            let mut state = self.lock();
            state.calls.push(PdCall { method, detail, at: std::time::Instant::now(), ttl_seconds });
            state.faults.take(|m| *m == method)
        };
        match fault {
            None => Ok(()),
            Some(PdFault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Some(PdFault::Status(status)) => Err(status_error(method, status, "fault injected by the test")),
            Some(PdFault::Unreachable) => {
                let source = tonic::transport::Endpoint::from_shared("not a uri".to_string()).expect_err("an invalid URI");
                Err(PdError::Connect { url: "http://fake-pd:2379".into(), source })
            }
        }
    }
}

fn status_error(method: PdMethod, status: u16, body: &str) -> PdError {
    PdError::Status { what: format!("{method:?}"), status, body: format!("{body:?}") }
}

#[async_trait]
impl Pd for FakePd {
    async fn cluster_version(&self) -> Result<String> {
        self.enter(PdMethod::ClusterVersion, String::new()).await?;
        Ok(self.lock().version.clone())
    }

    async fn stores(&self) -> Result<Vec<Store>> {
        self.enter(PdMethod::Stores, String::new()).await?;
        Ok(self.lock().stores.clone())
    }

    async fn schedulers(&self) -> Result<Vec<String>> {
        self.enter(PdMethod::Schedulers, String::new()).await?;
        Ok(self.lock().schedulers.keys().cloned().collect())
    }

    async fn paused_schedulers(&self) -> Result<Vec<String>> {
        self.enter(PdMethod::PausedSchedulers, String::new()).await?;
        Ok(self.paused_scheduler_names())
    }

    async fn pause_scheduler(&self, name: &str, delay_seconds: u64) -> Result<()> {
        self.enter_with_ttl(PdMethod::PauseScheduler, format!("{name} {delay_seconds}"), Some(delay_seconds as i64)).await?;
        let mut state = self.lock();
        let until = (delay_seconds > 0).then(|| Instant::now() + Duration::from_secs(delay_seconds));
        match state.schedulers.get_mut(name) {
            Some(paused) => {
                *paused = until;
                Ok(())
            }
            None => Err(status_error(PdMethod::PauseScheduler, 500, "[PD:scheduler:ErrSchedulerNotFound]scheduler not found")),
        }
    }

    /// As PD: the overrides set with a TTL do not show here.
    async fn schedule_config(&self) -> Result<Map<String, Value>> {
        self.enter(PdMethod::ScheduleConfig, String::new()).await?;
        Ok(self.lock().config.clone())
    }

    async fn set_config_with_ttl(&self, values: &Map<String, Value>, ttl_seconds: u64) -> Result<()> {
        let detail = format!("{} {ttl_seconds}", Value::Object(values.clone()));
        self.enter_with_ttl(PdMethod::SetConfigWithTtl, detail, Some(ttl_seconds as i64)).await?;
        let mut state = self.lock();
        let supported = |key: &str| PAUSED_CONFIG.iter().any(|(k, _)| key.strip_prefix("schedule.") == Some(*k));
        if let Some(key) = values.keys().find(|k| !supported(k)) {
            return Err(status_error(PdMethod::SetConfigWithTtl, 400, &format!("unsupported ttl config {key}")));
        }
        let until = Instant::now() + Duration::from_secs(ttl_seconds);
        for (key, value) in values {
            if ttl_seconds == 0 {
                state.overrides.remove(key);
            } else {
                state.overrides.insert(key.clone(), (value.clone(), until));
            }
        }
        Ok(())
    }

    async fn operators(&self) -> Result<Vec<String>> {
        self.enter(PdMethod::Operators, String::new()).await?;
        Ok(self.lock().operators.clone())
    }

    async fn min_resolved_ts(&self) -> Result<MinResolvedTs> {
        self.enter(PdMethod::MinResolvedTs, String::new()).await?;
        Ok(self.lock().min_resolved_ts)
    }

    async fn update_service_safepoint(&self, service_id: &str, ttl_seconds: i64, safe_point: u64) -> Result<SafepointUpdate> {
        let detail = format!("{service_id} {ttl_seconds} {safe_point}");
        self.enter_with_ttl(PdMethod::UpdateServiceSafepoint, detail, Some(ttl_seconds.max(0))).await?;
        let mut state = self.lock();
        if ttl_seconds <= 0 {
            state.safepoints.remove(service_id);
        } else if safe_point >= state.min_safepoint(Some(service_id)).1 {
            let until = Instant::now() + Duration::from_secs(ttl_seconds as u64);
            state.safepoints.insert(service_id.to_string(), (safe_point, until));
        }
        let (min_service_id, min_safe_point) = state.min_safepoint(None);
        Ok(SafepointUpdate { min_service_id, min_safe_point })
    }

    /// One region per store, led by it, the keyspace split in store order.
    async fn regions(&self) -> Result<Vec<crate::pd::Region>> {
        self.enter(PdMethod::Regions, String::new()).await?;
        let stores = self.lock().stores.clone();
        let key = |i: usize| if i == 0 || i == stores.len() { vec![] } else { format!("r{i:04}").into_bytes() };
        Ok(stores
            .iter()
            .enumerate()
            .map(|(i, store)| crate::pd::Region {
                id: 1000 + store.id,
                start_key: key(i),
                end_key: key(i + 1),
                conf_ver: 1,
                version: 1,
                peers: vec![(2000 + store.id, store.id)],
                leader_store: Some(store.id),
            })
            .collect())
    }

    async fn gc_safepoints(&self) -> Result<GcSafepoints> {
        self.enter(PdMethod::GcSafepoints, String::new()).await?;
        let state = self.lock();
        let (now, wall) = (Instant::now(), jiff::Timestamp::now().as_second());
        let gc_worker = ServiceSafepoint { service_id: GC_WORKER.into(), expired_at: i64::MAX, safe_point: state.gc_safe_point };
        let services = state.safepoints.iter().map(|(id, (sp, until))| ServiceSafepoint {
            service_id: id.clone(),
            expired_at: wall + until.duration_since(now).as_secs() as i64,
            safe_point: *sp,
        });
        Ok(GcSafepoints { gc_safe_point: state.gc_safe_point, service_safe_points: std::iter::once(gc_worker).chain(services).collect() })
    }
}
