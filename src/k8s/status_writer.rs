//! Writes `Backup` status (and our bookkeeping annotations) as merge patches of only what changed.
//!
//! TiDB Operator's Backup CRD has no status subresource, so status goes through the main resource; where a
//! CRD does have one, the main-resource write silently drops `.status`, which we detect and then switch
//! to `/status`. Every write carries the observed `resourceVersion`, so a concurrent writer makes us
//! re-read and re-apply the change instead of overwriting theirs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Map, Value, json};

use crate::api::{Backup, BackupStatus};

const MAX_CONFLICT_RETRIES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum StatusWriterError {
    #[error("writing Backup status: {0}")]
    Kube(#[from] kube::Error),
    #[error("writing Backup status: still conflicting after {MAX_CONFLICT_RETRIES} attempts")]
    Conflicts,
}

/// The parts of a Backup this operator owns and may change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OwnedFields {
    pub status: BackupStatus,
    pub annotations: BTreeMap<String, String>,
    pub finalizers: Vec<String>,
}

impl OwnedFields {
    pub fn of(backup: &Backup) -> Self {
        Self {
            status: backup.status.clone().unwrap_or_default(),
            annotations: backup.annotations().clone(),
            finalizers: backup.metadata.finalizers.clone().unwrap_or_default(),
        }
    }
}

pub struct StatusWriter {
    use_status_subresource: AtomicBool,
}

impl Default for StatusWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusWriter {
    pub fn new() -> Self {
        Self { use_status_subresource: AtomicBool::new(false) }
    }

    /// Applies `change` to the Backup's owned fields and writes the difference. Returns the Backup as
    /// stored afterwards (unchanged and unwritten when `change` changed nothing).
    pub async fn update(&self, api: &Api<Backup>, backup: &Backup, mut change: impl FnMut(&mut OwnedFields)) -> Result<Backup, StatusWriterError> {
        let name = backup.metadata.name.clone().unwrap_or_default();
        let mut current = backup.clone();
        for _ in 0..MAX_CONFLICT_RETRIES {
            let before = OwnedFields::of(&current);
            let mut after = before.clone();
            change(&mut after);
            let Some(patch) = merge_patch(&before, &after, current.metadata.resource_version.as_deref()) else {
                return Ok(current);
            };
            match self.write(api, &name, &patch).await {
                Ok(stored) => return Ok(stored),
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    current = api.get(&name).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StatusWriterError::Conflicts)
    }

    async fn write(&self, api: &Api<Backup>, name: &str, patch: &Value) -> Result<Backup, kube::Error> {
        let params = PatchParams::default();
        if self.use_status_subresource.load(Ordering::Relaxed) {
            return self.write_via_subresource(api, name, patch, &params).await;
        }
        let stored = api.patch(name, &params, &Patch::Merge(patch)).await?;
        if patch.get("status").is_some() && status_dropped(patch, &stored) {
            tracing::info!("Backup CRD has a status subresource; writing status through it from now on");
            let mut status_only = patch.clone();
            status_only["metadata"] = json!({"resourceVersion": stored.metadata.resource_version});
            let written = api.patch_status(name, &params, &Patch::Merge(&status_only)).await?;
            self.use_status_subresource.store(true, Ordering::Relaxed);
            return Ok(written);
        }
        Ok(stored)
    }

    async fn write_via_subresource(&self, api: &Api<Backup>, name: &str, patch: &Value, params: &PatchParams) -> Result<Backup, kube::Error> {
        let mut main = patch.clone();
        let status = main.as_object_mut().and_then(|m| m.remove("status"));
        let mut stored = None;
        if main["metadata"].get("annotations").is_some() || main["metadata"].get("finalizers").is_some() {
            stored = Some(api.patch(name, params, &Patch::Merge(&main)).await?);
        }
        match status {
            Some(status) => {
                let rv = stored.as_ref().map_or(patch["metadata"]["resourceVersion"].clone(), |b: &Backup| json!(b.metadata.resource_version));
                api.patch_status(name, params, &Patch::Merge(&json!({"metadata": {"resourceVersion": rv}, "status": status}))).await
            }
            None => Ok(stored.expect("a patch has status, annotations or finalizers")),
        }
    }
}

/// Whether the API server ignored the status part of a main-resource patch (a status subresource
/// exists): some field we set to a value is missing from what it stored.
fn status_dropped(patch: &Value, stored: &Backup) -> bool {
    let stored = stored.status.as_ref().map(|s| serde_json::to_value(s).unwrap_or_default()).unwrap_or_default();
    patch["status"]
        .as_object()
        .into_iter()
        .flatten()
        .any(|(key, value)| !value.is_null() && stored.get(key).is_none_or(Value::is_null))
}

/// The JSON merge patch from `before` to `after`, or `None` when nothing changed.
pub fn merge_patch(before: &OwnedFields, after: &OwnedFields, resource_version: Option<&str>) -> Option<Value> {
    let status = diff_objects(&to_object(&before.status), &to_object(&after.status));
    let mut annotations = Map::new();
    for (key, value) in &after.annotations {
        if before.annotations.get(key) != Some(value) {
            annotations.insert(key.clone(), json!(value));
        }
    }
    for key in before.annotations.keys().filter(|k| !after.annotations.contains_key(*k)) {
        annotations.insert(key.clone(), Value::Null);
    }
    let finalizers_changed = before.finalizers != after.finalizers;
    if status.is_empty() && annotations.is_empty() && !finalizers_changed {
        return None;
    }
    let mut metadata = json!({"resourceVersion": resource_version});
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
    }
    // A list is replaced whole by a merge patch; the resourceVersion guard keeps others' entries safe.
    if finalizers_changed {
        metadata["finalizers"] = json!(after.finalizers);
    }
    let mut patch = json!({"metadata": metadata});
    if !status.is_empty() {
        patch["status"] = Value::Object(status);
    }
    Some(patch)
}

fn to_object(status: &BackupStatus) -> Map<String, Value> {
    match serde_json::to_value(status) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// Top-level keys whose values differ (lists and nested objects are replaced whole), removed keys as null.
fn diff_objects(before: &Map<String, Value>, after: &Map<String, Value>) -> Map<String, Value> {
    let mut diff = Map::new();
    for (key, value) in after {
        if before.get(key) != Some(value) {
            diff.insert(key.clone(), value.clone());
        }
    }
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        diff.insert(key.clone(), Value::Null);
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConditionType;

    #[test]
    fn nothing_changed_means_no_patch() {
        let fields = OwnedFields::default();
        assert_eq!(merge_patch(&fields, &fields.clone(), Some("7")), None);
    }

    #[test]
    fn only_changed_status_keys_and_annotations_are_sent() {
        let mut before = OwnedFields::default();
        before.status.backup_path = Some("s3://b/p".into());
        before.annotations.insert("keep".into(), "1".into());
        before.annotations.insert("drop".into(), "1".into());
        let mut after = before.clone();
        after.status.phase = Some(ConditionType::Running);
        after.annotations.remove("drop");
        after.annotations.insert("new".into(), "x".into());
        let patch = merge_patch(&before, &after, Some("7")).unwrap();
        assert_eq!(
            patch,
            json!({
                "metadata": {"resourceVersion": "7", "annotations": {"drop": null, "new": "x"}},
                "status": {"phase": "Running"}
            })
        );
    }

    #[test]
    fn finalizer_changes_send_the_whole_list() {
        let before = OwnedFields { finalizers: vec!["other/keep".into()], ..Default::default() };
        let mut after = before.clone();
        after.finalizers.push("tidb.pingcap.com/backup-protection".into());
        let patch = merge_patch(&before, &after, Some("3")).unwrap();
        assert_eq!(patch["metadata"]["finalizers"], json!(["other/keep", "tidb.pingcap.com/backup-protection"]));
        assert!(patch.get("status").is_none());
    }

    #[test]
    fn a_cleared_status_field_is_sent_as_null() {
        let mut before = OwnedFields::default();
        before.status.commit_ts = Some("1".into());
        let after = OwnedFields::default();
        assert_eq!(merge_patch(&before, &after, None).unwrap()["status"], json!({"commitTs": null}));
    }
}
