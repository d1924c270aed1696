//! What PD holds, and how its TTLs run out.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{PdCall, PdFault, PdMethod};
use crate::pd::{MinResolvedTs, Store};
use crate::testkit::faults::FaultPlan;

pub const GC_WORKER: &str = "gc_worker";
pub const DEFAULT_SCHEDULERS: &[&str] = &[
    "balance-hot-region-scheduler",
    "balance-leader-scheduler",
    "balance-region-scheduler",
    "evict-slow-store-scheduler",
    "evict-stopping-store-scheduler",
];

pub struct State {
    pub version: String,
    pub stores: Vec<Store>,
    /// name -> paused until.
    pub schedulers: BTreeMap<String, Option<Instant>>,
    pub config: Map<String, Value>,
    /// dotted key -> (value, until).
    pub overrides: BTreeMap<String, (Value, Instant)>,
    pub operators: Vec<String>,
    pub min_resolved_ts: MinResolvedTs,
    pub gc_safe_point: u64,
    /// service id -> (safepoint, until).
    pub safepoints: BTreeMap<String, (u64, Instant)>,
    pub faults: FaultPlan<PdMethod, PdFault>,
    pub calls: Vec<PdCall>,
}

impl State {
    pub fn new() -> Self {
        let now_ms = jiff::Timestamp::now().as_millisecond() as u64;
        Self {
            version: "8.5.5".into(),
            stores: Vec::new(),
            schedulers: DEFAULT_SCHEDULERS.iter().map(|s| (s.to_string(), None)).collect(),
            config: schedule_config(),
            overrides: BTreeMap::new(),
            operators: Vec::new(),
            min_resolved_ts: MinResolvedTs { ts: now_ms << 18, is_real_time: true },
            gc_safe_point: 0,
            safepoints: BTreeMap::new(),
            faults: FaultPlan::default(),
            calls: Vec::new(),
        }
    }

    pub fn expire(&mut self, now: Instant) {
        for until in self.schedulers.values_mut() {
            if until.is_some_and(|t| t <= now) {
                *until = None;
            }
        }
        self.overrides.retain(|_, (_, until)| *until > now);
        self.safepoints.retain(|_, (_, until)| *until > now);
    }

    /// The lowest service safepoint (gc_worker's counts, and never expires), leaving out `except`.
    pub fn min_safepoint(&self, except: Option<&str>) -> (String, u64) {
        let others = self.safepoints.iter().filter(|(id, _)| Some(id.as_str()) != except).map(|(id, (sp, _))| (id.clone(), *sp));
        std::iter::once((GC_WORKER.to_string(), self.gc_safe_point))
            .chain(others)
            .min_by_key(|(_, sp)| *sp)
            .expect("gc_worker is always there")
    }
}

fn schedule_config() -> Map<String, Value> {
    let config = json!({
        "max-snapshot-count": 64, "max-pending-peer-count": 64, "max-merge-region-size": 54,
        "leader-schedule-limit": 4, "region-schedule-limit": 2048, "replica-schedule-limit": 64,
        "merge-schedule-limit": 8, "hot-region-schedule-limit": 4,
        "enable-location-replacement": "true", "enable-tikv-split-region": "true", "max-store-down-time": "30m0s",
    });
    config.as_object().cloned().expect("an object")
}
