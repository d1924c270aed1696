//! The monitoring assets in `manifests/monitoring/`: the PrometheusRule passes `promtool check rules` and
//! its unit tests (`prometheus-rule.test.yaml`), the chart ships the same groups, every query of the
//! Grafana dashboard parses, and every metric the three name is one the operator exports, so renaming a
//! metric fails here. Needs promtool (`tests/harness/build-tools promtool`), not the stack.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{describe_output, promtool_bin};

fn monitoring_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/monitoring")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh folder under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs promtool in `dir`; panics with its output unless it succeeds, and returns its stdout.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let bin = promtool_bin();
    let out = Command::new(&bin).args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    assert!(out.status.success(), "promtool {}: {}", args.join(" "), describe_output(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The PrometheusRule's `spec`, the rule file promtool reads.
fn rule_groups() -> Value {
    let rule = yaml(&monitoring_dir().join("prometheus-rule.yaml"));
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    let groups = &rule["spec"]["groups"];
    assert!(groups.as_array().is_some_and(|g| !g.is_empty()), "spec.groups: {groups}");
    json!({"groups": groups})
}

fn alerts(groups: &Value) -> Vec<&Value> {
    groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

#[test]
fn prometheus_rule_passes_promtool_check_and_its_unit_tests() {
    let groups = rule_groups();
    for alert in alerts(&groups) {
        let name = alert["alert"].as_str().unwrap();
        assert!(alert["labels"]["severity"].is_string(), "{name} has no severity label");
        for annotation in ["summary", "description"] {
            let text = alert["annotations"][annotation].as_str().unwrap_or_else(|| panic!("{name} has no {annotation}"));
            assert!(text.contains("{{ $labels."), "{name}'s {annotation} names none of the alert's labels: {text}");
        }
    }
    let names: BTreeSet<&str> = alerts(&groups).iter().map(|a| a["alert"].as_str().unwrap()).collect();
    for name in ["TiDBEBSBackupRPOAtRisk", "TiDBEBSBackupFailed", "TiDBEBSBackupRetentionFailing", "TiDBEBSBackupPDPauseHeldTooLong"] {
        assert!(names.contains(name), "{name} missing from the PrometheusRule: {names:?}");
    }

    // The unit tests read rules.yaml beside them.
    let dir = TempDir::new("tidb-ebs-monitoring-rules");
    dir.write("rules.yaml", &serde_norway::to_string(&groups).unwrap());
    let tests = read(&monitoring_dir().join("prometheus-rule.test.yaml"));
    dir.write("rules.test.yaml", &tests);
    let checked = promtool(&dir.0, &["check", "rules", "rules.yaml"]);
    assert!(checked.contains(&format!("{} rules found", names.len())), "{checked}");
    promtool(&dir.0, &["test", "rules", "rules.test.yaml"]);

    // Every alert has a case where it fires.
    let test_file: Value = serde_norway::from_str(&tests).unwrap();
    let firing: BTreeSet<&str> = test_file["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|c| c["alertname"].as_str().unwrap())
        .collect();
    assert_eq!(firing, names, "alerts without a unit test in which they fire");
}

#[test]
fn chart_prometheus_rule_has_the_manifest_groups() {
    let chart_copy = yaml(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/tidb-ebs-backup/files/prometheus-rules.yaml"));
    assert!(
        chart_copy == rule_groups(),
        "manifests/tidb-ebs-backup/files/prometheus-rules.yaml differs from spec of manifests/monitoring/prometheus-rule.yaml; copy it over"
    );
}

fn dashboard() -> Value {
    let path = monitoring_dir().join("grafana-dashboard.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = vec![];
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.extend(panel["panels"].as_array().into_iter().flatten());
        all.push(panel);
    }
    all
}

/// A dashboard query with its template variables replaced by values of the kind Grafana puts there.
fn substitute(expr: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "2m")
        .replace("$__interval", "1m")
        .replace("${namespace}", "tidb-cluster")
        .replace("$namespace", "tidb-cluster")
        .replace("${schedule}", "daily|hourly")
        .replace("$schedule", "daily|hourly");
    assert!(!expr.contains('$'), "a template variable the test does not know: {expr}");
    expr
}

#[test]
fn dashboard_is_a_dashboard_and_every_query_parses() {
    let dashboard = dashboard();
    for key in ["title", "uid"] {
        assert!(dashboard[key].as_str().is_some_and(|s| !s.is_empty()), "dashboard {key}: {}", dashboard[key]);
    }
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion: {}", dashboard["schemaVersion"]);

    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name} variable"));
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    let mut queries = vec![];
    for name in ["namespace", "schedule"] {
        let definition = variable(name)["definition"].as_str().unwrap_or_else(|| panic!("${name} has no definition"));
        let selector = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(&format!(", {name})")))
            .unwrap_or_else(|| panic!("${name} is not label_values(<selector>, {name}): {definition}"));
        assert_eq!(variable(name)["query"]["query"], definition, "${name}'s query and definition");
        queries.push((format!("variable_{name}"), substitute(selector)));
    }

    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let id = panel["id"].as_u64().unwrap_or_else(|| panic!("panel without an id: {}", panel["title"]));
        assert!(ids.insert(id), "panel id {id} used twice");
        assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()), "panel {id} has no title");
        assert!(panel["gridPos"]["w"].is_u64() && panel["gridPos"]["h"].is_u64(), "panel {id} has no gridPos");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {id} ({}) datasource", panel["title"]);
        let targets =
            panel["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("panel {id} ({}) has no targets", panel["title"]));
        for target in targets {
            let reference = target["refId"].as_str().unwrap_or_else(|| panic!("panel {id}: a target without refId"));
            assert_eq!(target["datasource"]["uid"], "${datasource}", "panel {id} target {reference} datasource");
            let expr = target["expr"].as_str().filter(|e| !e.is_empty()).unwrap_or_else(|| panic!("panel {id} target {reference} has no expr"));
            queries.push((format!("panel_{id}_{reference}"), substitute(expr)));
        }
    }

    // promtool parses expressions only inside rule files: one recording rule per query.
    let rules: Vec<Value> = queries.iter().map(|(name, expr)| json!({"record": format!("dashboard:{name}"), "expr": expr})).collect();
    let dir = TempDir::new("tidb-ebs-monitoring-dashboard");
    dir.write("dashboard-rules.yaml", &serde_norway::to_string(&json!({"groups": [{"name": "dashboard", "rules": rules}]})).unwrap());
    let checked = promtool(&dir.0, &["check", "rules", "dashboard-rules.yaml"]);
    assert!(checked.contains(&format!("{} rules found", queries.len())), "{checked}");
}

/// The sample names the operator's `/metrics` can carry, from the `# TYPE` lines. A labelled family with
/// no series yet is not encoded at all, so every recording method is called once first; a metric added
/// without a call here is missing, and a rule or panel using it fails below until one is added.
fn exported_series() -> BTreeSet<String> {
    use tidb_ebs_backup::metrics::{Metrics, ScheduleLabels};
    let metrics = Metrics::default();
    let schedule = ScheduleLabels { namespace: "tidb".into(), schedule: "daily".into(), cluster: "basic".into() };
    metrics.schedule_state(&schedule, Some(1), Some(2), Some(3), Some(86400));
    metrics.schedule_run(&schedule, "created");
    metrics.retention_deletion(&schedule, false);
    metrics.phase_entered(&tidb_ebs_backup::api::ConditionType::Complete);
    metrics.backup_finished("Complete", Some(10.0));
    metrics.cleanup("cleaned");
    metrics.pause_window(1.0);
    metrics.snapshots_started(1);
    metrics.aws_call("CreateSnapshots", &Ok::<(), tidb_ebs_backup::aws::AwsError>(()));
    metrics.reconcile_error("Test");
    metrics.pause_refreshed(true);
    metrics.keeper_started();
    metrics.keeper_stopped("resumed");
    metrics.set_orphan_snapshots(0);
    let text = metrics.encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("TYPE line: {line}"));
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "gauge" | "unknown" => &[""],
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            other => panic!("metric type {other} of {name}: teach the test its sample names"),
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    assert!(names.len() > 10, "too few metrics in the exposition:\n{text}");
    names
}

#[test]
fn every_metric_the_rules_and_dashboard_name_is_exported() {
    let exported = exported_series();
    let metric = regex_lite::Regex::new(r"tidb_ebs_backup_[A-Za-z0-9_:]+").unwrap();
    let files = [
        monitoring_dir().join("prometheus-rule.yaml"),
        monitoring_dir().join("prometheus-rule.test.yaml"),
        monitoring_dir().join("grafana-dashboard.json"),
    ];
    for file in &files {
        let text = read(file);
        let named: BTreeSet<&str> = metric.find_iter(&text).map(|m| m.as_str()).collect();
        assert!(!named.is_empty(), "{} names no metric", file.display());
        let unknown: Vec<&&str> = named.iter().filter(|n| !exported.contains(**n)).collect();
        assert!(unknown.is_empty(), "{} names metrics the operator does not export: {unknown:?}\nexported: {exported:#?}", file.display());
    }
    // The per-schedule series the alerts are built on are all used.
    let rules = read(&files[0]);
    for name in [
        "tidb_ebs_backup_schedule_last_success_timestamp_seconds",
        "tidb_ebs_backup_schedule_last_failure_timestamp_seconds",
        "tidb_ebs_backup_schedule_interval_seconds",
        "tidb_ebs_backup_schedule_retention_deletions_total",
    ] {
        assert!(rules.contains(name), "the PrometheusRule does not use {name}");
    }
}
