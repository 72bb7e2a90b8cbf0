//! Kubernetes-style API discovery: `GET /apis` lists the groups and versions served, and
//! `GET /apis/{group}/{version}` (`/api/v1` for the core group) the kinds of one of them, so
//! that clients (the web console, kubectl-like tools) need no built-in list of kinds.

use std::collections::BTreeMap;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::status_error;
use rivulet_core::resources::{KindInfo, ServedVersion, kinds};

/// Every served (group, version, kind, plural): stored kinds and older versions converted
/// from them.
fn served() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    let mut all: Vec<_> = kinds()
        .into_iter()
        .map(|k: &KindInfo| (k.group, k.version, k.kind, k.plural))
        .collect();
    all.extend(inventory::iter::<ServedVersion>().map(|v| (v.group, v.version, v.kind, v.plural)));
    all.sort();
    all.dedup();
    all
}

/// The version a group is stored in: what clients should prefer.
fn preferred_version(group: &str) -> Option<&'static str> {
    kinds()
        .into_iter()
        .filter(|k| k.group == group)
        .map(|k| k.version)
        .max_by_key(|version| version_rank(version))
}

/// Kubernetes' version order: GA over beta over alpha, then the higher number.
fn version_rank(version: &str) -> (u8, u32, u32) {
    let rest = version.trim_start_matches('v');
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, number) = if let Some(n) = tail.strip_prefix("beta") {
        (1, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (0, n.parse().unwrap_or(0))
    } else {
        (2, 0)
    };
    (stage, major, number)
}

pub(super) async fn groups() -> Response {
    let mut versions: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (group, version, _, _) in served() {
        if group.is_empty() {
            continue;
        }
        let list = versions.entry(group).or_default();
        if !list.contains(&version) {
            list.push(version);
        }
    }
    let groups: Vec<Value> = versions
        .into_iter()
        .map(|(group, mut list)| {
            list.sort_by_key(|v| std::cmp::Reverse(version_rank(v)));
            let preferred = preferred_version(group).unwrap_or(list[0]);
            json!({
                "name": group,
                "versions": list
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                    .collect::<Vec<_>>(),
                "preferredVersion": {"groupVersion": format!("{group}/{preferred}"), "version": preferred},
            })
        })
        .collect();
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        .into_response()
}

fn resource_list(group: &str, version: &str) -> Response {
    let resources: Vec<Value> = served()
        .into_iter()
        .filter(|(g, v, _, _)| *g == group && *v == version)
        .map(|(_, _, kind, plural)| {
            json!({
                "name": plural,
                "singularName": kind.to_ascii_lowercase(),
                "namespaced": true,
                "kind": kind,
                "verbs": ["get", "list", "update", "delete"],
            })
        })
        .collect();
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    if resources.is_empty() {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server does not serve {group_version}; GET /apis lists what it serves"),
        );
    }
    axum::Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
    .into_response()
}

pub(super) async fn group_resources(Path((group, version)): Path<(String, String)>) -> Response {
    resource_list(&group, &version)
}

pub(super) async fn core_resources(Path(version): Path<String>) -> Response {
    resource_list("", &version)
}

#[cfg(test)]
mod tests {
    use super::version_rank;

    #[test]
    fn versions_rank_as_kubernetes_orders_them() {
        let mut versions = vec!["v1alpha1", "v1beta3", "v1", "v1beta2", "v2"];
        versions.sort_by_key(|v| std::cmp::Reverse(version_rank(v)));
        assert_eq!(versions, ["v2", "v1", "v1beta3", "v1beta2", "v1alpha1"]);
    }
}
