//! TiDB version numbers as PD reports them (`v8.5.5`, `6.3.0-nightly`, or `None` on an empty cluster).

/// Whether `version` is at least `major.minor`; anything unreadable counts as older.
pub fn version_at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version.trim_start_matches('v').split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    let (v_major, v_minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (v_major, v_minor) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_versions() {
        assert!(version_at_least("8.5.5", (6, 3)));
        assert!(version_at_least("v6.3.0", (6, 3)));
        assert!(version_at_least("v10.0.0", (6, 3)));
        assert!(!version_at_least("6.2.9", (6, 3)));
        assert!(!version_at_least("5.4.0-nightly", (6, 3)));
        assert!(!version_at_least("None", (6, 3)));
    }
}
