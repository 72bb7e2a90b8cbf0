//! Knative's duck typing for destinations: the URL an Addressable object is reached at, and
//! that of a Kubernetes Service, which Knative calls without it being Addressable.

use std::sync::OnceLock;

use serde_json::Value;

/// Why an object gives no URL.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAddressable {
    #[error("no status.address or status.addresses (yet)")]
    AddressUnset,
    #[error("{field} has no url")]
    UrlMissing { field: &'static str },
    #[error("{field}.url {url:?} has no host")]
    HostMissing { field: &'static str, url: String },
}

/// The URL of an Addressable object, picked as Knative's resolver picks the default address:
/// the first of `status.addresses` when it lists any, else `status.address`. The URL must
/// name a host. `status.url` is not an address and is not used.
pub fn address_url(object: &Value) -> Result<String, NotAddressable> {
    Ok(address(object)?.0)
}

/// The URL of an Addressable object, as [`address_url`], with the `CACerts` of the same
/// address.
pub fn address(object: &Value) -> Result<(String, Option<String>), NotAddressable> {
    let status = object.get("status");
    let listed = status
        .and_then(|s| s.get("addresses"))
        .and_then(Value::as_array)
        .and_then(|addresses| addresses.first());
    let (field, address) = match listed {
        Some(first) => ("status.addresses[0]", first),
        None => (
            "status.address",
            status
                .and_then(|s| s.get("address"))
                .filter(|a| !a.is_null())
                .ok_or(NotAddressable::AddressUnset)?,
        ),
    };
    let url = address
        .get("url")
        .and_then(Value::as_str)
        .filter(|url| !url.is_empty())
        .ok_or(NotAddressable::UrlMissing { field })?;
    let has_host = url::Url::parse(url)
        .ok()
        .and_then(|parsed| parsed.host_str().map(|host| !host.is_empty()))
        .unwrap_or(false);
    if !has_host {
        return Err(NotAddressable::HostMissing {
            field,
            url: url.to_string(),
        });
    }
    let ca_certs = address
        .get("CACerts")
        .and_then(Value::as_str)
        .filter(|pem| !pem.trim().is_empty())
        .map(str::to_string);
    Ok((url.to_string(), ca_certs))
}

/// A Kubernetes Service's URL as Knative writes it: `http://{name}.{namespace}.svc.{domain}`,
/// no port and no path (the Service's port 80 is the HTTP default); `https` when the
/// destination carries CA certificates.
pub fn service_url(name: &str, namespace: &str, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{name}.{namespace}.svc.{}", cluster_domain())
}

/// The cluster's DNS domain, found as Knative finds it: the `svc.` search domain in
/// /etc/resolv.conf (a pod's), else `CLUSTER_DOMAIN`, else `cluster.local`.
fn cluster_domain() -> &'static str {
    static DOMAIN: OnceLock<String> = OnceLock::new();
    DOMAIN.get_or_init(|| {
        let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        domain_from_resolv_conf(&resolv_conf)
            .or_else(|| std::env::var("CLUSTER_DOMAIN").ok())
            .filter(|domain| !domain.is_empty())
            .unwrap_or_else(|| "cluster.local".to_string())
    })
}

fn domain_from_resolv_conf(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("search")).then_some(words)
        })
        .flatten()
        .find_map(|domain| domain.strip_prefix("svc."))
        .map(|domain| domain.trim_end_matches('.').to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_first_listed_address_is_the_default_then_status_address() {
        let both = json!({"status": {
            "address": {"name": "http", "url": "http://plain.example"},
            "addresses": [{"name": "https", "url": "https://secure.example"},
                          {"name": "http", "url": "http://plain.example"}]}});
        assert_eq!(address_url(&both).unwrap(), "https://secure.example");
        let single = json!({"status": {"address": {"url": "http://one.example/path"}}});
        assert_eq!(address_url(&single).unwrap(), "http://one.example/path");
        let empty_list = json!({"status": {"addresses": [], "address": {"url": "http://a.b"}}});
        assert_eq!(address_url(&empty_list).unwrap(), "http://a.b");
    }

    #[test]
    fn missing_urls_and_hosts_are_refused_with_the_field() {
        let cases = [
            (json!({}), NotAddressable::AddressUnset),
            (
                json!({"status": {"url": "http://not-an-address.example"}}),
                NotAddressable::AddressUnset,
            ),
            (
                json!({"status": {"address": {"name": "x"}}}),
                NotAddressable::UrlMissing {
                    field: "status.address",
                },
            ),
            (
                json!({"status": {"addresses": [{"url": "/relative"}]}}),
                NotAddressable::HostMissing {
                    field: "status.addresses[0]",
                    url: "/relative".into(),
                },
            ),
        ];
        for (object, expected) in cases {
            assert_eq!(address_url(&object), Err(expected), "{object}");
        }
    }

    #[test]
    fn the_cluster_domain_comes_from_the_svc_search_domain() {
        let pod = "nameserver 10.96.0.10\nsearch team.svc.corp.internal svc.corp.internal corp.internal\noptions ndots:5\n";
        assert_eq!(
            domain_from_resolv_conf(pod).as_deref(),
            Some("corp.internal")
        );
        assert_eq!(
            domain_from_resolv_conf("search svc.cluster.local.\n").as_deref(),
            Some("cluster.local")
        );
        assert_eq!(domain_from_resolv_conf("nameserver 1.1.1.1\n"), None);
        assert_eq!(domain_from_resolv_conf("searchsvc.x\n"), None);
    }
}
