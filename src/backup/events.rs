//! Kubernetes Events on one Backup. Failing to publish one is logged, never fatal: in a namespace being
//! deleted no Event can be created, and the backup must go on (or be cleaned up) all the same.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};

use crate::api::Backup;
use crate::reason::Reason;

#[derive(Clone)]
pub struct Publisher {
    recorder: Recorder,
    reference: ObjectReference,
}

impl Publisher {
    pub fn new(recorder: Recorder, backup: &Backup) -> Self {
        Self { recorder, reference: backup.object_ref(&()) }
    }

    pub async fn warning(&self, reason: Reason, note: &str, action: &str) {
        self.publish_raw(true, reason.as_str(), note, action).await;
    }

    pub async fn normal(&self, reason: Reason, note: &str, action: &str) {
        self.publish_raw(false, reason.as_str(), note, action).await;
    }

    /// An Event whose reason is a condition's (TiDB Operator's phases keep their own names).
    pub async fn publish_raw(&self, warning: bool, reason: &str, note: &str, action: &str) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: truncate(reason, 128),
            note: Some(truncate(note, 1024)),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &self.reference).await {
            tracing::warn!(error = %e, "publishing an Event failed");
        }
    }
}

/// At most `max` bytes, cut at a character boundary (the API server rejects longer reasons and notes).
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
