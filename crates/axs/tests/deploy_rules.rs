//! `deploy/axs/alerts.yml` and `grafana-dashboard.json` cannot rot: every `axs_*` series
//! an alert `expr` or a dashboard target names must be one the crate emits. The crate
//! names its series as constants in `src/metrics.rs` and passes those constants to the
//! `metrics` macros, so "emitted" is: a constant whose name appears as the first argument
//! of a `counter!`/`gauge!`/`histogram!` call somewhere under `src/`.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    test_support::workspace_root().join("crates/axs")
}

fn deploy_dir() -> PathBuf {
    test_support::workspace_root().join("deploy/axs")
}

/// `pub const NAME: &str = "series";` in src/metrics.rs.
fn constants() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(crate_dir().join("src/metrics.rs")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let Some((name, value)) = rest.split_once(": &str = \"") else {
            continue;
        };
        let value = value.trim_end_matches("\";");
        out.insert(name.to_owned(), value.to_owned());
    }
    out
}

fn sources() -> Vec<String> {
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
    let mut out = Vec::new();
    walk(&crate_dir().join("src"), &mut out);
    out
}

/// Series passed to a metrics macro, by constant (`m::NAME`, `crate::metrics::NAME`).
fn emitted() -> BTreeSet<String> {
    let constants = constants();
    let mut names = BTreeSet::new();
    for source in sources() {
        for macro_name in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in source.match_indices(macro_name) {
                let argument: String = source[at + macro_name.len()..]
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let constant = argument.rsplit("::").next().unwrap_or_default();
                if let Some(series) = constants.get(constant) {
                    names.insert(series.clone());
                }
            }
        }
    }
    names
}

/// Every `axs_*` identifier in a PromQL expression.
fn referenced(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in expr.match_indices("axs_") {
        let preceded = expr[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if preceded {
            continue;
        }
        names.push(
            expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect(),
        );
    }
    names
}

/// The emitted series `name` belongs to (a histogram's series carry suffixes).
fn series_of(name: &str, emitted: &BTreeSet<String>) -> Option<String> {
    if emitted.contains(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        name.strip_suffix(suffix)
            .filter(|base| emitted.contains(*base))
            .map(str::to_owned)
    })
}

fn check(what: &str, expr: &str, emitted: &BTreeSet<String>) -> Vec<String> {
    let names = referenced(expr);
    assert!(
        !names.is_empty(),
        "{what}: expr names no axs_ metric: {expr}"
    );
    names
        .iter()
        .map(|name| {
            series_of(name, emitted).unwrap_or_else(|| {
                panic!(
                    "{what} references {name}, which the crate does not emit; emitted: {emitted:?}"
                )
            })
        })
        .collect()
}

#[test]
fn every_declared_metric_is_emitted_and_the_scan_sees_them() {
    let declared: BTreeSet<String> = constants().into_values().collect();
    assert!(declared.len() >= 15, "{declared:?}");
    let emitted = emitted();
    let silent: Vec<_> = declared.difference(&emitted).collect();
    assert!(silent.is_empty(), "declared but never emitted: {silent:?}");
    assert_eq!(
        referenced("max(axs_a{x=\"y\"}) / rate(axs_b_total[5m]) + tx_axs_c"),
        vec!["axs_a", "axs_b_total"]
    );
}

#[test]
fn alert_rules_reference_only_emitted_metrics() {
    let emitted = emitted();
    let text = std::fs::read_to_string(deploy_dir().join("alerts.yml")).unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let groups = rules["groups"].as_sequence().expect("groups");
    let mut alerts = BTreeSet::new();
    for group in groups {
        for rule in group["rules"].as_sequence().expect("rules") {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            check(alert, expr, &emitted);
            assert!(alerts.insert(alert.to_owned()), "duplicate alert {alert}");
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{alert}: no summary"
            );
        }
    }
    for needed in [
        "AxsSubmitsRefusedByBacklog",
        "AxsPublishErrors",
        "AxsConsumerLagHigh",
        "AxsNoPartitionsOwned",
        "AxsLeaseChurn",
        "AxsFencedBatches",
    ] {
        assert!(alerts.contains(needed), "missing alert {needed}");
    }
}

#[test]
fn dashboard_is_valid_json_over_every_emitted_metric() {
    let emitted = emitted();
    let text = std::fs::read_to_string(deploy_dir().join("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["title"].as_str().is_some());
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut shown = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            let expr = target["expr"].as_str().expect("target expr");
            shown.extend(check(title, expr, &emitted));
        }
    }
    let missing: Vec<_> = emitted.difference(&shown).collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}
