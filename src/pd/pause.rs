//! What "pause scheduling" means, as BR does it: the balance/shuffle/evict schedulers that are present,
//! and the schedule limits that would otherwise move data while volumes are snapshotted.

use serde_json::{Map, Value, json};

pub const SCHEDULERS_TO_PAUSE: &[&str] = &[
    "balance-leader-scheduler",
    "balance-hot-region-scheduler",
    "balance-region-scheduler",
    "shuffle-leader-scheduler",
    "shuffle-region-scheduler",
    "shuffle-hot-region-scheduler",
    "evict-slow-store-scheduler",
];

/// Schedule config keys set (with a TTL) while paused: key in `/config/schedule` -> paused value.
pub const PAUSED_CONFIG: &[(&str, PausedValue)] = &[
    ("hot-region-schedule-limit", PausedValue::Int(0)),
    ("leader-schedule-limit", PausedValue::Int(0)),
    ("merge-schedule-limit", PausedValue::Int(0)),
    ("region-schedule-limit", PausedValue::Int(0)),
    ("replica-schedule-limit", PausedValue::Int(0)),
    ("enable-tikv-split-region", PausedValue::Bool(false)),
    ("enable-location-replacement", PausedValue::Bool(false)),
    ("max-pending-peer-count", PausedValue::Int(2_147_483_647)),
    ("max-snapshot-count", PausedValue::SnapshotCount),
];

#[derive(Clone, Copy, Debug)]
pub enum PausedValue {
    Int(i64),
    Bool(bool),
    /// `min(40, original × stores)`, as BR.
    SnapshotCount,
}

/// From the current schedule config, the dotted-key values to set while paused and the originals to
/// restore afterwards. Keys absent from this PD's config are skipped.
pub fn pause_config_values(current: &Map<String, Value>, store_count: usize) -> (Map<String, Value>, Map<String, Value>) {
    let mut paused = Map::new();
    let mut originals = Map::new();
    for (key, value) in PAUSED_CONFIG {
        let Some(original) = current.get(*key) else { continue };
        let dotted = format!("schedule.{key}");
        let new = match value {
            PausedValue::Int(n) => json!(n),
            PausedValue::Bool(b) => json!(b),
            PausedValue::SnapshotCount => {
                let original = original.as_u64().unwrap_or(64);
                json!(original.saturating_mul(store_count as u64).min(40))
            }
        };
        originals.insert(dotted.clone(), normalize(original));
        paused.insert(dotted, new);
    }
    (paused, originals)
}

/// PD prints booleans as "true"/"false" strings; the TTL setter wants JSON booleans or numbers.
fn normalize(value: &Value) -> Value {
    match value.as_str() {
        Some("true") => json!(true),
        Some("false") => json!(false),
        _ => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_present_keys_and_remembers_originals() {
        let current = json!({
            "leader-schedule-limit": 4, "region-schedule-limit": 2048, "max-snapshot-count": 64,
            "enable-tikv-split-region": "true", "max-pending-peer-count": 64, "unrelated": 1
        });
        let (paused, originals) = pause_config_values(current.as_object().unwrap(), 3);
        assert_eq!(paused["schedule.leader-schedule-limit"], json!(0));
        assert_eq!(paused["schedule.max-snapshot-count"], json!(40));
        assert_eq!(paused["schedule.enable-tikv-split-region"], json!(false));
        assert!(!paused.contains_key("schedule.merge-schedule-limit"), "absent keys are skipped");
        assert_eq!(originals["schedule.enable-tikv-split-region"], json!(true));
        assert_eq!(originals["schedule.max-snapshot-count"], json!(64));
        assert_eq!(originals.len(), paused.len());
    }

    #[test]
    fn snapshot_count_scales_with_stores_up_to_forty() {
        let current = json!({"max-snapshot-count": 4});
        let (paused, _) = pause_config_values(current.as_object().unwrap(), 3);
        assert_eq!(paused["schedule.max-snapshot-count"], json!(12));
    }
}
