//! One backup at a time per TidbCluster: which Backup goes first, and which one to wake when the
//! Backup holding the cluster ends or goes.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::record::BackupRecord;
use crate::api::{Backup, ConditionType};

/// The other live volume-snapshot Backups of `of`'s TidbCluster that have not ended.
fn rivals<'a>(known: &'a [Arc<Backup>], of: &'a Backup) -> impl Iterator<Item = &'a Arc<Backup>> + 'a {
    let cluster = (of.cluster_namespace(), of.spec.br.cluster.clone());
    known
        .iter()
        .filter(move |other| other.metadata.uid != of.metadata.uid)
        .filter(|other| other.metadata.deletion_timestamp.is_none() && other.is_volume_snapshot())
        .filter(|other| other.spec.federal_volume_backup_phase.is_none())
        .filter(move |other| (other.cluster_namespace(), other.spec.br.cluster.clone()) == cluster)
        .filter(|other| !other.phase().is_some_and(ConditionType::is_terminal))
}

fn started(backup: &Backup) -> bool {
    BackupRecord::of(backup).is_ok_and(|r| r.plan.is_some())
}

/// Queue order among waiting Backups: oldest first, then namespace and name.
fn queue_key(backup: &Backup) -> impl Ord {
    (backup.metadata.creation_timestamp.clone(), backup.metadata.namespace.clone(), backup.name_any())
}

/// The Backups that go before `me` as this cache knows them: any already started, and older ones already
/// waiting.
pub fn ahead_of<'a>(known: &'a [Arc<Backup>], me: &'a Backup) -> Vec<&'a Arc<Backup>> {
    let mine = queue_key(me);
    rivals(known, me).filter(|other| started(other) || (other.phase().is_some() && queue_key(other) < mine)).collect()
}

/// Whom to wake now that `changed` has stopped holding its cluster (it ended or is being deleted): the
/// first in line behind it, unless another Backup already holds the cluster. Only one is woken; it wakes
/// the next when it ends, so a long queue costs one reconcile per hand-over.
pub fn next_in_line(known: &[Arc<Backup>], changed: &Backup) -> Option<ObjectRef<Backup>> {
    let ended = changed.phase().is_some_and(ConditionType::is_terminal) || changed.metadata.deletion_timestamp.is_some();
    if !ended || !changed.is_volume_snapshot() || rivals(known, changed).any(|other| started(other)) {
        return None;
    }
    rivals(known, changed).min_by_key(|other| queue_key(other)).map(|next| ObjectRef::from_obj(next.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupSpec, BackupStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn backup(name: &str, cluster: &str, phase: Option<ConditionType>, created: i64) -> Arc<Backup> {
        let spec: BackupSpec = serde_json::from_value(serde_json::json!({"backupMode": "volume-snapshot", "br": {"cluster": cluster}})).unwrap();
        let mut backup = Backup::new(name, spec);
        backup.metadata.namespace = Some("tidb".into());
        backup.metadata.uid = Some(format!("uid-{name}"));
        backup.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(1_800_000_000 + created).unwrap()));
        backup.status = Some(BackupStatus { phase, ..Default::default() });
        Arc::new(backup)
    }

    #[test]
    fn the_oldest_waiting_backup_of_the_cluster_is_woken_when_one_ends() {
        let known = vec![
            backup("done", "basic", Some(ConditionType::Complete), 0),
            backup("later", "basic", Some(ConditionType::Scheduled), 20),
            backup("next", "basic", Some(ConditionType::Scheduled), 10),
            backup("old", "basic", Some(ConditionType::Failed), 5),
            backup("elsewhere", "other", Some(ConditionType::Scheduled), 1),
        ];
        assert_eq!(next_in_line(&known, &known[0]).map(|r| r.name), Some("next".into()));
        assert_eq!(next_in_line(&known, &known[1]), None, "a backup still waiting hands nothing over");
        let mut deleted = (*backup("running", "basic", Some(ConditionType::Running), 1)).clone();
        deleted.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert_eq!(next_in_line(&known, &deleted).map(|r| r.name), Some("next".into()), "a deleted one hands over too");
    }

    #[test]
    fn the_older_waiting_backup_is_ahead_and_a_newer_one_is_not() {
        let known = vec![backup("a", "basic", Some(ConditionType::Scheduled), 0), backup("b", "basic", Some(ConditionType::Scheduled), 10)];
        assert_eq!(ahead_of(&known, &known[1]).iter().map(|b| b.name_any()).collect::<Vec<_>>(), vec!["a"]);
        assert!(ahead_of(&known, &known[0]).is_empty());
        let other_cluster = backup("c", "other", Some(ConditionType::Scheduled), 20);
        assert!(ahead_of(&known, &other_cluster).is_empty());
    }
}
