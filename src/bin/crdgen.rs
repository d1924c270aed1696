//! Writes a CRD generated from `src/api` to stdout: `crdgen backup` or `crdgen backupschedule` (CI
//! regenerates `crds/` and fails on a diff).
//!
//! The CRDs carry no status subresource, exactly like TiDB Operator's: status is written through the
//! main resource so a cluster with TiDB Operator's own CRDs behaves the same.

use kube::CustomResourceExt;
use tidb_ebs_backup::api::{Backup, BackupSchedule};

fn main() {
    let kind = std::env::args().nth(1).unwrap_or_else(|| "backup".into());
    let mut crd = match kind.as_str() {
        "backup" => Backup::crd(),
        "backupschedule" => BackupSchedule::crd(),
        other => {
            eprintln!("usage: crdgen backup|backupschedule (not {other:?})");
            std::process::exit(2);
        }
    };
    for version in &mut crd.spec.versions {
        version.subresources = None;
    }
    print!("{}", serde_norway::to_string(&crd).expect("CRD serialises to YAML"));
}
