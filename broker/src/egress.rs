//! Where Rivulet may send events: an allow/deny policy on the addresses actually connected
//! to, checked after DNS resolution, so a trigger, sink or source cannot be pointed at cloud
//! metadata services or at hosts the operator has fenced off.
//!
//! # Rules
//!
//! Entries of `--egress-allow` and `--egress-deny` are CIDRs (`10.0.0.0/8`, `::1/128`), bare
//! addresses (`192.0.2.7`, taken as a single-address CIDR) or host names
//! (`hooks.example.com`, or `*.example.com` for every name below `example.com`). Names are
//! compared case-insensitively, without a trailing dot.
//!
//! A connection to address `ip`, reached through host name `host` (none for an IP-literal
//! URL), is decided in this order:
//!
//! 1. **Deny**: `host` matches a deny name, or `ip` lies in a deny CIDR → refused. Deny wins
//!    over allow whatever the entries' order or width.
//! 2. **Built-in refusals**: link-local (`169.254.0.0/16`, `fe80::/10`), cloud metadata
//!    addresses (`169.254.169.254`, `fd00:ec2::254`, `100.100.100.200`) and names
//!    (`metadata.google.internal`, `metadata`, `instance-data`, `instance-data.ec2.internal`),
//!    unspecified (`0.0.0.0/8`, `::`), multicast (`224.0.0.0/4`, `ff00::/8`) and broadcast
//!    (`255.255.255.255`) → refused, unless explicitly allowed: `host` is listed by exact name
//!    in the allow list, or an allow CIDR containing `ip` is at least as narrow as the
//!    built-in range (so `169.254.169.254/32` lifts the refusal, `0.0.0.0/0` does not).
//! 3. **Allow list**: when one is given, `ip` must lie in an allow CIDR or `host` match an
//!    allow name; anything else is refused.
//! 4. Otherwise allowed: loopback and private ranges are reachable by default (local
//!    subscribers are normal) and can be denied.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are judged as their IPv4 address, and the
//! built-in refusals also look at the IPv4 address inside a NAT64 address (`64:ff9b::/96`).

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use rivulet_core::metrics::{EgressLabels, Metrics};

/// One entry of an allow or deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressRule {
    /// Addresses in a CIDR.
    Net(IpNet),
    /// A host name, exactly (lower case, no trailing dot).
    Host(String),
    /// Every host name below this domain (`*.example.com` holds `example.com`).
    Domain(String),
}

/// Why an entry of `--egress-allow` / `--egress-deny` is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "egress rule {entry:?}: {why} (expected a CIDR such as 10.0.0.0/8, an IP address, a host name or *.domain)"
)]
pub struct EgressRuleError {
    pub entry: String,
    pub why: String,
}

impl FromStr for EgressRule {
    type Err = EgressRuleError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let error = |why: &str| EgressRuleError {
            entry: entry.to_string(),
            why: why.to_string(),
        };
        let text = entry.trim();
        if text.is_empty() {
            return Err(error("empty"));
        }
        if let Ok(net) = text.parse::<IpNet>() {
            if net.trunc() != net {
                return Err(error(&format!(
                    "host bits are set; the network is {}",
                    net.trunc()
                )));
            }
            return Ok(EgressRule::Net(net));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(EgressRule::Net(IpNet::from(ip)));
        }
        if text.contains('/') || text.contains(':') {
            return Err(error(
                "not a valid CIDR, and a host name has no '/' or ':' (give no scheme or port)",
            ));
        }
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = normalize_host(name);
        if !is_host_name(&name) {
            return Err(error("not a host name (letters, digits, '-' and '.')"));
        }
        Ok(if wildcard {
            EgressRule::Domain(name)
        } else {
            EgressRule::Host(name)
        })
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressRule::Net(net) => write!(f, "{net}"),
            EgressRule::Host(name) => write!(f, "{name}"),
            EgressRule::Domain(name) => write!(f, "*.{name}"),
        }
    }
}

impl EgressRule {
    fn matches_host(&self, host: &str) -> bool {
        match self {
            EgressRule::Net(_) => false,
            EgressRule::Host(name) => host == name,
            EgressRule::Domain(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|head| head.ends_with('.')),
        }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        matches!(self, EgressRule::Net(net) if net.contains(&ip))
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Why a destination was refused; the label of `rivulet_egress_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// An `--egress-deny` entry matched.
    Denied,
    /// An allow list is set and no entry of it matched.
    NotAllowed,
    /// A cloud metadata address or host name.
    Metadata,
    /// Link-local (`169.254.0.0/16`, `fe80::/10`).
    LinkLocal,
    /// `0.0.0.0/8` or `::`.
    Unspecified,
    Multicast,
    Broadcast,
}

impl RefusalReason {
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::Denied => "denied",
            RefusalReason::NotAllowed => "not_allowed",
            RefusalReason::Metadata => "metadata",
            RefusalReason::LinkLocal => "link_local",
            RefusalReason::Unspecified => "unspecified",
            RefusalReason::Multicast => "multicast",
            RefusalReason::Broadcast => "broadcast",
        }
    }
}

/// One refused address (or host name) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The address or host name refused.
    pub target: String,
    pub reason: RefusalReason,
    /// The list entry or built-in range that decided it.
    pub rule: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Refusal {
            target,
            reason,
            rule,
        } = self;
        match reason {
            RefusalReason::Denied => write!(f, "{target} (denied by --egress-deny {rule})"),
            RefusalReason::NotAllowed => write!(f, "{target} (not in --egress-allow)"),
            RefusalReason::Metadata => write!(
                f,
                "{target} (cloud metadata service {rule}; refused unless --egress-allow names it)"
            ),
            RefusalReason::LinkLocal => write!(
                f,
                "{target} (link-local {rule}; refused unless --egress-allow names it)"
            ),
            RefusalReason::Unspecified => write!(f, "{target} (unspecified address {rule})"),
            RefusalReason::Multicast => write!(f, "{target} (multicast {rule})"),
            RefusalReason::Broadcast => write!(f, "{target} (broadcast {rule})"),
        }
    }
}

/// Outbound connections that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The policy refused every address of the destination.
    #[error("egress to {destination} refused: {}", list(.refusals))]
    Refused {
        destination: String,
        refusals: Vec<Refusal>,
    },
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
}

fn list(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ranges refused unless explicitly allowed, most specific first so the reason given is the
/// most telling one (metadata before link-local).
const BUILT_IN: &[(&str, RefusalReason)] = &[
    ("169.254.169.254/32", RefusalReason::Metadata),
    ("fd00:ec2::254/128", RefusalReason::Metadata),
    ("100.100.100.200/32", RefusalReason::Metadata),
    ("169.254.0.0/16", RefusalReason::LinkLocal),
    ("fe80::/10", RefusalReason::LinkLocal),
    ("0.0.0.0/8", RefusalReason::Unspecified),
    ("::/128", RefusalReason::Unspecified),
    ("224.0.0.0/4", RefusalReason::Multicast),
    ("ff00::/8", RefusalReason::Multicast),
    ("255.255.255.255/32", RefusalReason::Broadcast),
];

/// Host names of cloud metadata services, refused before any lookup.
const METADATA_HOSTS: &[&str] = &[
    "metadata.google.internal",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// The allow and deny lists. The default has empty lists: only the built-in refusals apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<EgressRule>,
    deny: Vec<EgressRule>,
}

impl EgressPolicy {
    pub fn new(allow: Vec<EgressRule>, deny: Vec<EgressRule>) -> Self {
        Self { allow, deny }
    }

    /// Parses the entries of `--egress-allow` and `--egress-deny`.
    pub fn parse<A: AsRef<str>, D: AsRef<str>>(
        allow: &[A],
        deny: &[D],
    ) -> Result<Self, EgressRuleError> {
        Ok(Self::new(
            allow
                .iter()
                .map(|e| e.as_ref().parse())
                .collect::<Result<_, _>>()?,
            deny.iter()
                .map(|e| e.as_ref().parse())
                .collect::<Result<_, _>>()?,
        ))
    }

    pub fn allow(&self) -> &[EgressRule] {
        &self.allow
    }

    pub fn deny(&self) -> &[EgressRule] {
        &self.deny
    }

    /// Whether a host name is refused before it is even looked up: a deny entry or a metadata
    /// name not explicitly allowed. The addresses it resolves to are checked afterwards.
    pub fn check_name(&self, host: &str) -> Result<(), Refusal> {
        let host = normalize_host(host);
        if let Some(rule) = self.deny.iter().find(|r| r.matches_host(&host)) {
            return Err(Refusal {
                target: host,
                reason: RefusalReason::Denied,
                rule: rule.to_string(),
            });
        }
        if METADATA_HOSTS.contains(&host.as_str()) && !self.names_exactly(&host) {
            return Err(Refusal {
                rule: host.clone(),
                target: host,
                reason: RefusalReason::Metadata,
            });
        }
        Ok(())
    }

    /// Whether connecting to `ip`, reached through `host` (none for an IP-literal URL), is
    /// allowed. See the module documentation for the order of the rules.
    pub fn check(&self, host: Option<&str>, ip: IpAddr) -> Result<(), Refusal> {
        let ip = ip.to_canonical();
        let host = host.map(normalize_host);
        let host = host.as_deref();
        if let Some(host) = host {
            self.check_name(host)?;
        }
        if let Some(rule) = self.deny.iter().find(|r| r.matches_ip(ip)) {
            return Err(Refusal {
                target: ip.to_string(),
                reason: RefusalReason::Denied,
                rule: rule.to_string(),
            });
        }
        let named = host.is_some_and(|h| self.names_exactly(h));
        if let Some((range, reason)) = built_in_refusal(ip)
            && !named
            && !self.allows_within(ip, range)
        {
            return Err(Refusal {
                target: ip.to_string(),
                reason,
                rule: range.to_string(),
            });
        }
        if !self.allow.is_empty()
            && !self
                .allow
                .iter()
                .any(|r| r.matches_ip(ip) || host.is_some_and(|h| r.matches_host(h)))
        {
            return Err(Refusal {
                target: match host {
                    Some(h) => format!("{h} at {ip}"),
                    None => ip.to_string(),
                },
                reason: RefusalReason::NotAllowed,
                rule: String::new(),
            });
        }
        Ok(())
    }

    /// Whether the allow list names `host` itself (not through a `*.` entry).
    fn names_exactly(&self, host: &str) -> bool {
        self.allow
            .iter()
            .any(|r| matches!(r, EgressRule::Host(name) if name == host))
    }

    /// Whether an allow CIDR holding `ip` is no wider than the built-in `range`.
    fn allows_within(&self, ip: IpAddr, range: IpNet) -> bool {
        self.allow.iter().any(|r| {
            matches!(r, EgressRule::Net(net)
                if net.contains(&ip) && net.prefix_len() >= range.prefix_len())
        })
    }
}

/// The built-in range refusing `ip`, if any; for a NAT64 address, its IPv4 address too.
fn built_in_refusal(ip: IpAddr) -> Option<(IpNet, RefusalReason)> {
    let find = |ip: IpAddr| {
        BUILT_IN.iter().find_map(|(range, reason)| {
            let range: IpNet = range.parse().expect("the built-in ranges are valid");
            range.contains(&ip).then_some((range, *reason))
        })
    };
    find(ip).or_else(|| nat64_embedded(ip).and_then(|v4| find(IpAddr::V4(v4))))
}

/// The IPv4 address inside a well-known-prefix NAT64 address (RFC 6052).
fn nat64_embedded(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let prefix: ipnet::Ipv6Net = "64:ff9b::/96".parse().expect("a valid prefix");
    prefix.contains(&v6).then(|| {
        let [.., a, b, c, d] = v6.octets();
        Ipv4Addr::new(a, b, c, d)
    })
}

/// The policy in force with what it needs to report refusals: the metric and a log line
/// per destination (not per attempt, so a busy trigger to a refused address does not flood
/// the log). Shared by every outbound HTTP client.
pub struct Egress {
    policy: EgressPolicy,
    metrics: Option<Arc<Metrics>>,
    logged: Mutex<HashSet<String>>,
}

/// Destinations remembered as logged; beyond that the memory is cleared and they are logged
/// again, which bounds both the memory and the log rate.
const LOGGED_DESTINATIONS: usize = 4096;

impl fmt::Debug for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Egress")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Default for Egress {
    fn default() -> Self {
        Self::new(EgressPolicy::default(), None)
    }
}

impl Egress {
    pub fn new(policy: EgressPolicy, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            policy,
            metrics,
            logged: Mutex::default(),
        }
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Checks what can be checked before connecting: an IP-literal host (the HTTP client
    /// skips the resolver for those) or a host name refused by name.
    pub fn check_url(&self, url: &url::Url) -> Result<(), EgressError> {
        let result = match url.host() {
            Some(url::Host::Ipv4(ip)) => self.policy.check(None, IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.policy.check(None, IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => self.policy.check_name(name),
            None => Ok(()),
        };
        result.map_err(|refusal| {
            let destination = url.host_str().unwrap_or_default().to_string();
            self.refused(destination, vec![refusal])
        })
    }

    /// Resolves `host` and keeps the addresses the policy allows.
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, EgressError> {
        if let Err(refusal) = self.policy.check_name(host) {
            return Err(self.refused(host.to_string(), vec![refusal]));
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|source| EgressError::Lookup {
                host: host.to_string(),
                source,
            })?
            .collect();
        if found.is_empty() {
            return Err(EgressError::NoAddress {
                host: host.to_string(),
            });
        }
        let mut allowed = Vec::new();
        let mut refusals = Vec::new();
        for addr in found {
            match self.policy.check(Some(host), addr.ip()) {
                Ok(()) => allowed.push(addr),
                Err(refusal) => refusals.push(refusal),
            }
        }
        if allowed.is_empty() {
            return Err(self.refused(host.to_string(), refusals));
        }
        if !refusals.is_empty() {
            tracing::debug!(%host, refused = %list(&refusals), "some addresses of the destination are refused; using the others");
        }
        Ok(allowed)
    }

    /// Counts and logs a refusal, and makes the error for it.
    fn refused(&self, destination: String, refusals: Vec<Refusal>) -> EgressError {
        let reason = refusals.first().map_or(RefusalReason::Denied, |r| r.reason);
        if let Some(metrics) = &self.metrics {
            metrics
                .egress_refused
                .get_or_create(&EgressLabels {
                    reason: reason.label(),
                })
                .inc();
        }
        let error = EgressError::Refused {
            destination,
            refusals,
        };
        let key = match &error {
            EgressError::Refused { destination, .. } => format!("{destination}/{}", reason.label()),
            _ => String::new(),
        };
        let first_time = {
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            if logged.len() >= LOGGED_DESTINATIONS {
                logged.clear();
            }
            logged.insert(key)
        };
        if first_time {
            tracing::warn!(%error, "outbound request refused by the egress policy");
        }
        error
    }

    /// An HTTP client builder that follows no redirects, ignores proxy variables (a proxy
    /// would connect on our behalf, out of the policy's sight) and resolves through the
    /// policy. Callers must still call [`Egress::check_url`] for each request, as IP-literal
    /// URLs never reach the resolver.
    pub fn client_builder(self: &Arc<Self>) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(Resolver(self.clone())))
    }
}

/// The resolver given to the HTTP client: DNS, then the policy on every address.
struct Resolver(Arc<Egress>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = egress.resolve(&host).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Finds an egress refusal in an error's chain (the HTTP client wraps the resolver's error).
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressError> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<EgressError>()
            && matches!(found, EgressError::Refused { .. })
        {
            return Some(found);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> EgressPolicy {
        EgressPolicy::parse(allow, deny).expect("valid rules")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn reason(p: &EgressPolicy, host: Option<&str>, addr: &str) -> Option<&'static str> {
        p.check(host, ip(addr)).err().map(|r| r.reason.label())
    }

    #[test]
    fn rules_parse_cidrs_addresses_and_names() {
        assert_eq!(
            "10.0.0.0/8".parse::<EgressRule>().unwrap(),
            EgressRule::Net("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            "192.0.2.7".parse::<EgressRule>().unwrap(),
            EgressRule::Net("192.0.2.7/32".parse().unwrap())
        );
        assert_eq!(
            "::1".parse::<EgressRule>().unwrap(),
            EgressRule::Net("::1/128".parse().unwrap())
        );
        assert_eq!(
            "Hooks.Example.COM.".parse::<EgressRule>().unwrap(),
            EgressRule::Host("hooks.example.com".into())
        );
        assert_eq!(
            "*.example.com".parse::<EgressRule>().unwrap(),
            EgressRule::Domain("example.com".into())
        );
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (entry, why) in [
            ("", "empty"),
            ("10.0.0.1/8", "host bits are set; the network is 10.0.0.0/8"),
            ("10.0.0.0/33", "not a valid CIDR"),
            ("http://example.com", "give no scheme or port"),
            ("example.com:80", "give no scheme or port"),
            ("exa mple.com", "not a host name"),
            ("*.", "not a host name"),
        ] {
            let error = entry.parse::<EgressRule>().unwrap_err();
            assert!(
                error.to_string().contains(why),
                "{entry:?}: {error} should say {why:?}"
            );
        }
    }

    #[test]
    fn defaults_refuse_metadata_link_local_unspecified_and_multicast() {
        let p = EgressPolicy::default();
        assert_eq!(reason(&p, None, "169.254.169.254"), Some("metadata"));
        assert_eq!(reason(&p, None, "fd00:ec2::254"), Some("metadata"));
        assert_eq!(reason(&p, None, "169.254.10.1"), Some("link_local"));
        assert_eq!(reason(&p, None, "fe80::1"), Some("link_local"));
        assert_eq!(reason(&p, None, "0.0.0.0"), Some("unspecified"));
        assert_eq!(reason(&p, None, "::"), Some("unspecified"));
        assert_eq!(reason(&p, None, "224.0.0.1"), Some("multicast"));
        assert_eq!(reason(&p, None, "ff02::1"), Some("multicast"));
        assert_eq!(reason(&p, None, "255.255.255.255"), Some("broadcast"));
        // Disguises of the metadata address.
        assert_eq!(reason(&p, None, "::ffff:169.254.169.254"), Some("metadata"));
        assert_eq!(reason(&p, None, "64:ff9b::a9fe:a9fe"), Some("metadata"));
        assert_eq!(
            p.check_name("Metadata.Google.Internal.")
                .unwrap_err()
                .reason,
            RefusalReason::Metadata
        );
        assert_eq!(
            p.check_name("metadata").unwrap_err().reason,
            RefusalReason::Metadata
        );
    }

    #[test]
    fn defaults_allow_loopback_private_and_public() {
        let p = EgressPolicy::default();
        for addr in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "192.168.1.1",
            "fd12::1",
            "8.8.8.8",
        ] {
            assert_eq!(reason(&p, None, addr), None, "{addr}");
        }
        assert_eq!(reason(&p, Some("localhost"), "127.0.0.1"), None);
    }

    #[test]
    fn deny_entries_refuse_and_win_over_allow() {
        let p = policy(
            &["10.0.0.0/8", "internal.example.com"],
            &["10.1.0.0/16", "127.0.0.0/8", "*.example.com"],
        );
        assert_eq!(reason(&p, None, "10.1.2.3"), Some("denied"));
        assert_eq!(reason(&p, None, "10.2.0.1"), None);
        assert_eq!(reason(&p, None, "127.0.0.1"), Some("denied"));
        assert_eq!(
            reason(&p, Some("internal.example.com"), "10.2.0.1"),
            Some("denied"),
            "a denied name is refused even when listed in the allow list"
        );
        let refusal = p.check(None, ip("10.1.9.9")).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "10.1.9.9 (denied by --egress-deny 10.1.0.0/16)"
        );
    }

    #[test]
    fn an_allow_list_admits_only_what_it_names() {
        let p = policy(
            &["192.0.2.0/24", "hooks.example.com", "*.svc.cluster.local"],
            &[],
        );
        assert_eq!(reason(&p, None, "192.0.2.9"), None);
        assert_eq!(reason(&p, None, "127.0.0.1"), Some("not_allowed"));
        assert_eq!(
            reason(&p, Some("other.example.com"), "198.51.100.1"),
            Some("not_allowed")
        );
        assert_eq!(reason(&p, Some("hooks.example.com"), "198.51.100.1"), None);
        assert_eq!(reason(&p, Some("a.b.svc.cluster.local"), "10.0.0.5"), None);
        assert_eq!(
            reason(&p, Some("svc.cluster.local"), "10.0.0.5"),
            Some("not_allowed"),
            "*.domain holds the names below it, not the domain itself"
        );
        assert_eq!(
            reason(&p, Some("evilsvc.cluster.local"), "10.0.0.5"),
            Some("not_allowed")
        );
    }

    #[test]
    fn built_in_refusals_are_lifted_only_by_a_narrow_explicit_entry() {
        let broad = policy(&["0.0.0.0/0", "::/0"], &[]);
        assert_eq!(reason(&broad, None, "169.254.169.254"), Some("metadata"));
        assert_eq!(reason(&broad, None, "fe80::1"), Some("link_local"));
        assert_eq!(reason(&broad, None, "8.8.8.8"), None);

        let exact = policy(&["169.254.169.254/32"], &[]);
        assert_eq!(reason(&exact, None, "169.254.169.254"), None);
        assert_eq!(reason(&exact, None, "169.254.1.1"), Some("link_local"));

        let range = policy(&["169.254.0.0/16"], &[]);
        assert_eq!(reason(&range, None, "169.254.1.1"), None);
        assert_eq!(
            reason(&range, None, "169.254.169.254"),
            Some("metadata"),
            "the metadata address needs its own /32"
        );

        let by_name = policy(&["metadata.google.internal"], &[]);
        assert!(by_name.check_name("metadata.google.internal").is_ok());
        assert_eq!(
            reason(
                &by_name,
                Some("metadata.google.internal"),
                "169.254.169.254"
            ),
            None
        );
        assert_eq!(reason(&by_name, None, "169.254.169.254"), Some("metadata"));

        let wildcard = policy(&["*.google.internal"], &[]);
        assert!(wildcard.check_name("metadata.google.internal").is_err());
    }

    #[test]
    fn refusal_errors_name_every_address_and_its_reason() {
        let error = EgressError::Refused {
            destination: "localhost".into(),
            refusals: vec![
                Refusal {
                    target: "127.0.0.1".into(),
                    reason: RefusalReason::Denied,
                    rule: "127.0.0.0/8".into(),
                },
                Refusal {
                    target: "::1".into(),
                    reason: RefusalReason::Denied,
                    rule: "::1/128".into(),
                },
            ],
        };
        assert_eq!(
            error.to_string(),
            "egress to localhost refused: 127.0.0.1 (denied by --egress-deny 127.0.0.0/8), \
             ::1 (denied by --egress-deny ::1/128)"
        );
    }

    #[test]
    fn ip_literal_urls_are_checked_and_counted() {
        let metrics = Arc::new(Metrics::new());
        let egress = Egress::new(policy(&[], &["127.0.0.0/8"]), Some(metrics.clone()));
        let refused = |u: &str| egress.check_url(&url::Url::parse(u).unwrap()).is_err();
        assert!(refused("http://169.254.169.254/latest/meta-data/"));
        assert!(refused("http://[::ffff:a9fe:a9fe]/"));
        assert!(
            refused("http://2130706433/"),
            "127.0.0.1 written as a number"
        );
        assert!(refused("http://metadata.google.internal/"));
        assert!(!refused("http://10.0.0.1:8080/"));
        assert!(
            !refused("http://example.com/"),
            "names are judged after DNS"
        );
        let text = metrics.render();
        assert!(
            text.contains(r#"rivulet_egress_refused_total{reason="metadata"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rivulet_egress_refused_total{reason="denied"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn names_are_judged_by_the_addresses_they_resolve_to() {
        let egress = Egress::new(policy(&[], &["127.0.0.0/8", "::1/128"]), None);
        let error = egress.resolve("localhost").await.unwrap_err();
        assert!(matches!(error, EgressError::Refused { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("127.0.0.1 (denied by --egress-deny 127.0.0.0/8)"),
            "{error}"
        );

        let open = Egress::default();
        let addrs = open.resolve("localhost").await.expect("localhost resolves");
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
