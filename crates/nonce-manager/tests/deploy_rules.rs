//! `deploy/nonce-manager/alerts.yml` and `grafana-dashboard.json` cannot rot: every
//! `nonce_manager_*` series an alert `expr` or a dashboard target names must be emitted
//! by a `metrics::counter!`/`gauge!`/`histogram!` call in this crate's `src/`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    test_support::workspace_root().join("deploy/nonce-manager")
}

/// Names passed to the metrics macros anywhere under `src/`.
fn emitted() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut sources = Vec::new();
    walk(
        &test_support::workspace_root().join("crates/nonce-manager/src"),
        &mut sources,
    );
    let mut names = BTreeSet::new();
    for source in &sources {
        for macro_name in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in source.match_indices(macro_name) {
                let rest = source[at + macro_name.len()..].trim_start();
                if let Some(rest) = rest.strip_prefix('"') {
                    if let Some(end) = rest.find('"') {
                        names.insert(rest[..end].to_owned());
                    }
                }
            }
        }
    }
    names
}

/// Every `nonce_manager_*` identifier in a PromQL expression.
fn referenced(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in expr.match_indices("nonce_manager_") {
        let preceded = expr[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if preceded {
            continue;
        }
        let name: String = expr[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        names.push(name);
    }
    names
}

fn check(what: &str, expr: &str, emitted: &BTreeSet<String>) -> usize {
    let names = referenced(expr);
    for name in &names {
        // A histogram's series carry these suffixes.
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| emitted.contains(*base))
            })
            .unwrap_or(name);
        assert!(
            emitted.contains(base),
            "{what} references {name}, which the crate does not emit; emitted: {emitted:?}"
        );
    }
    names.len()
}

#[test]
fn the_source_scan_finds_the_known_metrics() {
    let emitted = emitted();
    for name in [
        "nonce_manager_fee_cap_reached",
        "nonce_manager_drift_alert",
        "nonce_manager_finality_backpressure_total",
    ] {
        assert!(emitted.contains(name), "{name} not found in {emitted:?}");
    }
    assert_eq!(
        referenced("max(nonce_manager_a{x=\"y\"}) / rate(nonce_manager_b_total[5m])"),
        vec!["nonce_manager_a", "nonce_manager_b_total"]
    );
}

#[test]
fn alert_rules_reference_only_emitted_metrics() {
    let emitted = emitted();
    let text = std::fs::read_to_string(deploy_dir().join("alerts.yml")).unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let groups = rules["groups"].as_sequence().expect("groups");
    assert!(!groups.is_empty());
    let mut alerts = BTreeSet::new();
    let mut references = 0;
    for group in groups {
        for rule in group["rules"].as_sequence().expect("rules") {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            let found = check(alert, expr, &emitted);
            assert!(found > 0, "{alert}: expr names no nonce_manager_ metric");
            references += found;
            assert!(alerts.insert(alert.to_owned()), "duplicate alert {alert}");
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{alert}: no summary"
            );
        }
    }
    for needed in [
        "NonceManagerFeeCapReached",
        "NonceManagerDriftDetected",
        "NonceManagerFinalityBackpressure",
        "NonceManagerReceiptsLagging",
        "NonceManagerLeaseLost",
        "NonceManagerLeaseChurn",
        "NonceManagerReorgs",
    ] {
        assert!(alerts.contains(needed), "missing alert {needed}");
    }
    assert!(references >= alerts.len());
}

#[test]
fn dashboard_is_valid_json_over_emitted_metrics() {
    let emitted = emitted();
    let text = std::fs::read_to_string(deploy_dir().join("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["title"].as_str().is_some());
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    let mut shown = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            let expr = target["expr"].as_str().expect("target expr");
            assert!(check(title, expr, &emitted) > 0, "{title}: {expr}");
            shown.extend(referenced(expr));
        }
    }
    // Every emitted metric is on the dashboard.
    let missing: Vec<_> = emitted.difference(&shown).collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}
