//! Every reason this operator gives: in status conditions, in Events, in metric labels and in the
//! README's list (`README.md` is checked against [`Reason::ALL`] by a test). The names are TiDB
//! Operator's where it has one for the same thing.

use std::fmt;

/// What a reason is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The backup is `Failed` (or `Invalid`) with it.
    Failure,
    /// A step in progress, on a condition or a Normal Event.
    Progress,
    /// A Warning Event that does not fail the backup.
    Warning,
    /// Deleting a Backup's data (`Clean`, `CleanFailed`).
    Cleanup,
    /// A reconcile that could not write to Kubernetes, retried (`tidb_ebs_backup_reconcile_errors_total`).
    Retried,
    /// An Event on a `BackupSchedule`.
    Schedule,
}

macro_rules! reasons {
    ($($name:ident: $kind:ident, $doc:literal;)+) => {
        /// A reason, spelled as the variant's name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $(#[doc = $doc] $name,)+
            /// A reason read from a record written by another version of the operator.
            Unknown,
        }

        impl Reason {
            pub const ALL: &[Reason] = &[$(Reason::$name,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)+
                    Reason::Unknown => "Unknown",
                }
            }

            pub fn kind(self) -> Kind {
                match self {
                    $(Reason::$name => Kind::$kind,)+
                    Reason::Unknown => Kind::Failure,
                }
            }

            pub fn description(self) -> &'static str {
                match self {
                    $(Reason::$name => $doc,)+
                    Reason::Unknown => "a reason this version does not know",
                }
            }

            pub fn parse(name: &str) -> Reason {
                match name {
                    $(stringify!($name) => Reason::$name,)+
                    _ => Reason::Unknown,
                }
            }
        }
    };
}

reasons! {
    // The spec and the cluster, checked before anything is touched.
    InvalidSpec: Failure, "the spec cannot be used (the condition is `Invalid`)";
    TidbClusterNotFound: Failure, "the TidbCluster named by `spec.br.cluster` does not exist (or disappeared)";
    TiFlashNotSupported: Failure, "the cluster has TiFlash, whose volumes EBS snapshot backups do not capture";
    NoTiKV: Failure, "the TidbCluster has no TiKV replicas";
    ClusterVersionTooOld: Failure, "the cluster is older than v6.3.0, the first with EBS snapshot backup";
    MinResolvedTsNotEnabled: Failure, "PD's min resolved ts is not real-time, so no consistent point can be read";
    StoreMismatch: Failure, "TiKV pods and PD's stores do not match one to one";
    StoreNotUp: Failure, "a TiKV store is not `Up` in PD";
    TiKVPodsNotFound: Failure, "no TiKV pod of the cluster was found";
    StoreIDMissing: Failure, "a TiKV pod has no store id label yet";
    PVCNotFound: Failure, "a TiKV pod's PersistentVolumeClaim does not exist";
    PVCNotBound: Failure, "a TiKV pod's PersistentVolumeClaim is not bound";
    PVNotFound: Failure, "a claim's PersistentVolume does not exist";
    GetVolumeIDFailed: Failure, "a PersistentVolume is not an EBS volume (no CSI or in-tree EBS volume id)";
    PodVolumeMissing: Failure, "a TiKV pod does not mount the volume its claim names";
    VolumeNotFound: Failure, "an EBS volume of a TiKV or PD pod does not exist in EC2";
    VolumeNotAttached: Failure, "an EBS volume of a TiKV pod is not attached to an instance";
    VolumesOnSeveralInstances: Failure, "the volumes of one TiKV pod are attached to different instances";
    BucketNotAccessible: Failure, "the S3 bucket cannot be reached with the backup's credentials";
    FileExistedInExternalStorage: Failure, "a `backupmeta`, or another Backup's prefix lock, is at the prefix already";
    PrefixLockRace: Failure, "the prefix lock changed while it was being claimed";
    // Credentials and the outside systems.
    SecretNotFound: Failure, "the Secret named by `spec.s3.secretName` does not exist";
    SecretKeyMissing: Failure, "the Secret lacks `access_key` or `secret_key`";
    ServiceAccountNotFound: Failure, "the ServiceAccount named by `spec.serviceAccount` does not exist";
    TokenRequestFailed: Failure, "a web-identity token for the ServiceAccount could not be had";
    AWSCredentialsFailed: Failure, "AWS credentials could not be obtained or were refused";
    AWSThrottled: Failure, "AWS kept throttling beyond the time the operator waits";
    AWSRequestFailed: Failure, "AWS refused a request";
    AWSUnreachable: Failure, "AWS did not answer";
    AWSUnexpectedAnswer: Failure, "AWS answered in a way the operator cannot use";
    PDUnreachable: Failure, "PD did not answer";
    PDGrpcFailed: Failure, "a PD gRPC call failed";
    PDRequestFailed: Failure, "PD refused a request or answered something unreadable";
    PDTLSConfigInvalid: Failure, "the cluster's TLS material for PD cannot be used";
    PDTLSSecretNotFound: Failure, "TLS is on but the `<cluster>-cluster-client-secret` Secret does not exist";
    PDTLSSecretInvalid: Failure, "the cluster client Secret lacks `ca.crt`, `tls.crt` or `tls.key`";
    KubernetesAPIFailed: Failure, "the Kubernetes API refused a request (for example a missing permission)";
    // The pause and the snapshots.
    ClusterClaimLost: Failure, "another Backup holds the TidbCluster now";
    PDPauseFailed: Failure, "PD scheduling could not be paused";
    ScheduleNotQuiet: Failure, "PD still ran operators after the pause";
    GCSafepointAhead: Failure, "PD's GC safepoint is already past the resolved ts";
    TiKVPrepareFailed: Failure, "TiKV's stores could not be prepared for the snapshots (the prepare stream failed)";
    WaitApplyTimeout: Failure, "TiKV's regions did not all apply their log within a third of the pause TTL";
    TiKVLeaseLapsed: Failure, "a TiKV store may have left the prepared state (its lease lapsed or its stream ended) before the snapshots were started";
    PauseLapsed: Failure, "the pause may have lapsed before or while the CreateSnapshots calls were made";
    PauseWindowExceeded: Failure, "the snapshots were not all started within `spec.volumeBackupInitJobMaxActiveSeconds`";
    CreateSnapshotsFailed: Failure, "a CreateSnapshots call failed";
    SnapshotQuotaExceeded: Failure, "AWS refused a snapshot for a quota (pending snapshots per Region or per volume) while PD was paused";
    PendingSnapshotQuota: Progress, "waiting before the pause until the Region's pending snapshots leave room for this backup's";
    SnapshotFailed: Failure, "an EBS snapshot ended in `error`";
    SnapshotMissing: Failure, "an EBS snapshot of the backup no longer exists";
    BackupMetaInvalid: Failure, "the `backupmeta` could not be built";
    BackupMetaWriteFailed: Failure, "the `backupmeta` could not be written (ridden out, then failed)";
    RecordLost: Failure, "the operator's record on the Backup lost a part it needs";
    // Progress.
    WaitingForOtherBackup: Progress, "waiting while another Backup of the same TidbCluster runs";
    PausingScheduling: Progress, "pausing PD scheduling and GC";
    Paused: Progress, "scheduling and GC paused at the resolved ts, TiKV's stores prepared";
    Snapshotting: Progress, "CreateSnapshots calls are being sent";
    SnapshotsCreated: Progress, "every snapshot started, PD resumed, `backupmeta` written";
    SnapshotsCompleted: Progress, "every snapshot is `completed`";
    // Warnings that do not fail the backup.
    PDResumeFailed: Warning, "PD could not be told to resume; it drops the pause within one TTL";
    TiKVPrepareUnsupported: Warning, "TiKV older than v7.6 does not serve the prepare stream: PD's pause only, as that BR does";
    PauseRefreshFailed: Warning, "refreshing the pause failed; it is retried";
    TiDBOperatorInterference: Warning, "TiDB Operator marked the Backup `Invalid`; this operator will not run it";
    // Clean-up.
    NothingToClean: Cleanup, "the deleted Backup created no data";
    Cleaning: Cleanup, "deleting the Backup's snapshots and `backupmeta`";
    Cleaned: Cleanup, "the Backup's snapshots and `backupmeta` are deleted";
    CleanCredentialsFailed: Cleanup, "no credentials could delete the data (retried)";
    CleanBackupDataFailed: Cleanup, "deleting the data failed (retried)";
    ReleasedWithoutCleanup: Cleanup, "the Backup was let go without clean-up, as its annotation asked";
    // BackupSchedules.
    ScheduleInvalid: Schedule, "the schedule's cron, time zone, deadline, tiers or grace cannot be used: it creates and deletes nothing until fixed";
    ScheduledBackupCreated: Schedule, "a Backup was created for a scheduled time";
    ScheduledRunSkipped: Schedule, "a scheduled time came while a backup of the schedule or of its TidbCluster was still running: no Backup for it";
    ScheduledRunMissed: Schedule, "a scheduled time is past the starting deadline (the operator was down): no Backup for it";
    RetentionDeleted: Schedule, "retention deleted a backup (its cleanPolicy decides what happens to the data)";
    RetentionFailed: Schedule, "retention could not delete a backup (retried)";
    // Reconcile errors (the Kubernetes API's own refusals above are `KubernetesAPIFailed`).
    StatusWriteFailed: Retried, "the Backup's status or record could not be written";
    RecordUnreadable: Retried, "the record annotation on the Backup cannot be read (the Backup is left alone)";
}

/// An error that knows which reason it is.
pub trait Reasoned: fmt::Display {
    fn reason(&self) -> Reason;
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Reason> for String {
    fn from(reason: Reason) -> String {
        reason.as_str().to_string()
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
        Ok(Reason::parse(&name))
    }
}

/// The README's table of reasons, as `README.md` must hold it between its `reasons` markers.
pub fn readme_table() -> String {
    let mut out = String::from("| reason | kind | meaning |\n|---|---|---|\n");
    for reason in Reason::ALL {
        out.push_str(&format!("| `{reason}` | {:?} | {} |\n", reason.kind(), reason.description()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_kept_readable() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), *reason);
            let json = serde_json::to_string(reason).unwrap();
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), *reason);
        }
        assert_eq!(serde_json::from_str::<Reason>("\"SomethingOld\"").unwrap(), Reason::Unknown);
    }

    #[test]
    fn the_readme_lists_every_reason() {
        let readme = include_str!("../README.md");
        let start = readme.find("<!-- reasons:start -->\n").expect("README has a reasons:start marker") + "<!-- reasons:start -->\n".len();
        let end = readme.find("<!-- reasons:end -->").expect("README has a reasons:end marker");
        assert_eq!(&readme[start..end], readme_table(), "README.md's reason table is stale; put this between the markers:\n{}", readme_table());
    }
}
