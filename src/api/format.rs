//! Formats TiDB Operator users already see in `kubectl get bk`: Go's `time.Duration` string and
//! go-humanize's base-1000 byte sizes.

use std::time::Duration;

/// `(completed - started).Round(time.Second).String()` as Go prints it, e.g. `14m16s`, `1h0m5s`, `0s`.
pub fn go_duration(elapsed: Duration) -> String {
    let total = (elapsed.as_millis() + 500) / 1000;
    let (hours, minutes, seconds) = (total / 3600, (total / 60) % 60, total % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds}s"),
        _ => format!("{hours}h{minutes}m{seconds}s"),
    }
}

/// go-humanize `Bytes`: SI units, one decimal below 10, e.g. `0 B`, `1.5 MB`, `18 GB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let exponent = ((bytes as f64).ln() / 1000f64.ln()).floor() as usize;
    let exponent = exponent.min(UNITS.len() - 1);
    let value = (bytes as f64 / 1000f64.powi(exponent as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 { format!("{value:.1} {}", UNITS[exponent]) } else { format!("{value:.0} {}", UNITS[exponent]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_match_go() {
        let cases = [
            (0, "0s"),
            (499, "0s"),
            (500, "1s"),
            (59_000, "59s"),
            (60_000, "1m0s"),
            (856_000, "14m16s"),
            (3_600_000, "1h0m0s"),
            (3_661_400, "1h1m1s"),
            (90_061_000, "25h1m1s"),
        ];
        for (millis, want) in cases {
            assert_eq!(go_duration(Duration::from_millis(millis)), want, "{millis} ms");
        }
    }

    #[test]
    fn sizes_match_go_humanize() {
        let cases = [
            (0, "0 B"),
            (9, "9 B"),
            (10, "10 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (1_500_000, "1.5 MB"),
            (82_854_982, "83 MB"),
            (18_000_000_000, "18 GB"),
            (2_147_483_648, "2.1 GB"),
            (107_374_182_400, "107 GB"),
            (5_000_000_000_000, "5.0 TB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(human_bytes(bytes), want, "{bytes} bytes");
        }
    }
}
