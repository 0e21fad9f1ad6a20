//! The deploy assets stay in step with the metrics the server actually exports.

use std::collections::BTreeSet;

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("palisade_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.insert(name);
    }
    names
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::test]
async fn every_metric_in_the_alert_rules_and_the_dashboard_is_exported() {
    let app = crate::helpers::spawn_app().await;
    let declared: BTreeSet<&str> = app
        .state
        .metrics
        .names()
        .iter()
        .map(String::as_str)
        .collect();
    for file in [
        "deploy/prometheus/palisade-alerts.yml",
        "deploy/grafana/palisade-dashboard.json",
    ] {
        for name in metric_names(&read(file)) {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(
                declared.contains(base),
                "{file} uses {name}, which /metrics does not export"
            );
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/palisade-dashboard.json")).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
}
