//! The Kubernetes manifests under `deploy/`: the CRDs match the Rust types, every document is
//! a Kubernetes object of a known kind with no field Kubernetes would drop, RBAC names every
//! verb and resource, and the Helm chart renders for every backend (when a renderer is
//! installed, see deploy/README.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, PodSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const BACKENDS: [&str; 4] = ["embedded", "kafka", "rabbitmq", "nats"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn generated_crds() -> String {
    rivulet::resources::crds_yaml().expect("the CRDs generate")
}

/// The committed CRD files, each beside the command that regenerates it.
fn crd_files() -> Vec<PathBuf> {
    vec![
        deploy().join("crds.yaml"),
        deploy().join("helm/rivulet/crds/crds.yaml"),
    ]
}

#[test]
fn committed_crds_equal_the_generated_ones() {
    let generated = generated_crds();
    for file in crd_files() {
        let relative = file.strip_prefix(repo()).unwrap().display().to_string();
        assert!(
            read(&file) == generated,
            "{relative} differs from the CRDs generated from the Rust types; regenerate it with \
             `cargo run -- crds --output {relative}`"
        );
    }
}

#[test]
fn crds_command_prints_and_writes_the_generated_crds() {
    let generated = generated_crds();
    let binary = env!("CARGO_BIN_EXE_rivulet");
    let stdout = Command::new(binary)
        .arg("crds")
        .env("RIVULET_LOG", "warn")
        .output()
        .expect("rivulet runs");
    assert!(stdout.status.success(), "rivulet crds failed: {stdout:?}");
    assert_eq!(String::from_utf8(stdout.stdout).unwrap(), generated);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crds.yaml");
    let written = Command::new(binary)
        .args(["crds", "--to"])
        .arg(&file)
        .env("RIVULET_LOG", "warn")
        .output()
        .expect("rivulet runs");
    assert!(
        written.status.success(),
        "rivulet crds --to failed: {written:?}"
    );
    assert!(written.stdout.is_empty(), "--to printed to stdout too");
    assert_eq!(read(&file), generated);
}

// --- typed parsing ---

/// Parses every document of a YAML stream (empty documents skipped).
fn documents(text: &str, origin: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .unwrap_or_else(|e| panic!("{origin}: not valid YAML: {e}"));
    docs.into_iter()
        .filter(|doc| !doc.is_null() && doc.as_object().is_none_or(|m| !m.is_empty()))
        .collect()
}

/// The first place where `a` and `b` differ, as a JSON pointer.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|key| {
                let here = format!("{path}/{key}");
                match (x.get(key), y.get(key)) {
                    (Some(p), Some(q)) => first_difference(p, q, &here),
                    _ => Some(here),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}/{i}"))),
        _ if a == b => None,
        _ => Some(path.to_string()),
    }
}

/// Deserializes `doc` as `T` and checks nothing was lost: a misspelt or misplaced field
/// would be dropped by Kubernetes too.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> T {
    let object: T = serde_path_to_error::deserialize(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid object of its kind: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    if let Some(path) = first_difference(doc, &back, "") {
        panic!(
            "{origin}: field {path} is not part of the Kubernetes type (or has the wrong shape)"
        );
    }
    object
}

/// The objects of a manifest set, by kind; an unknown kind fails.
#[derive(Default)]
struct Objects {
    crds: Vec<CustomResourceDefinition>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    namespaces: Vec<Namespace>,
    claims: Vec<PersistentVolumeClaim>,
    network_policies: Vec<NetworkPolicy>,
}

impl Objects {
    fn add(&mut self, doc: &Value, origin: &str) {
        let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        match (api_version, kind) {
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                self.crds.push(typed(doc, origin))
            }
            ("apps/v1", "Deployment") => self.deployments.push(typed(doc, origin)),
            ("v1", "Service") => self.services.push(typed(doc, origin)),
            ("v1", "ServiceAccount") => self.service_accounts.push(typed(doc, origin)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                self.cluster_roles.push(typed(doc, origin))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                self.cluster_role_bindings.push(typed(doc, origin))
            }
            ("v1", "ConfigMap") => self.config_maps.push(typed(doc, origin)),
            ("v1", "Secret") => self.secrets.push(typed(doc, origin)),
            ("v1", "Namespace") => self.namespaces.push(typed(doc, origin)),
            ("v1", "PersistentVolumeClaim") => self.claims.push(typed(doc, origin)),
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                self.network_policies.push(typed(doc, origin))
            }
            _ => panic!("{origin}: unexpected kind {api_version:?} {kind:?}"),
        }
    }

    fn add_text(&mut self, text: &str, origin: &str) {
        for (index, doc) in documents(text, origin).iter().enumerate() {
            self.add(doc, &format!("{origin} (document {})", index + 1));
        }
    }

    fn deployment(&self, component: &str) -> &Deployment {
        self.deployments
            .iter()
            .find(|d| component_of(&d.metadata.labels) == Some(component))
            .unwrap_or_else(|| panic!("no Deployment labelled component {component}"))
    }

    /// The pod spec of a component's Deployment.
    fn pod_spec(&self, component: &str) -> &PodSpec {
        self.deployment(component)
            .spec
            .template
            .spec
            .as_ref()
            .unwrap_or_else(|| panic!("the {component} Deployment has no pod spec"))
    }

    /// The role of a component that lists its rules. Aggregated roles (the addressable
    /// resolver) carry the same component label, but their rules are filled in by the
    /// controller manager from other roles, so there is nothing in them to check here.
    fn cluster_role(&self, component: &str) -> &ClusterRole {
        self.cluster_roles
            .iter()
            .find(|r| {
                component_of(&r.metadata.labels) == Some(component) && r.aggregation_rule.is_none()
            })
            .unwrap_or_else(|| panic!("no ClusterRole labelled component {component}"))
    }

    /// The aggregated ClusterRole that gathers every role labelled
    /// `duck.knative.dev/addressable: "true"` (Knative's way to read any addressable kind).
    fn addressable_resolver(&self) -> Option<&ClusterRole> {
        self.cluster_roles.iter().find(|role| {
            role.aggregation_rule
                .iter()
                .flat_map(|rule| rule.cluster_role_selectors.iter().flatten())
                .any(|selector| {
                    selector
                        .match_labels
                        .as_ref()
                        .and_then(|labels| labels.get("duck.knative.dev/addressable"))
                        .is_some_and(|value| value == "true")
                })
        })
    }

    /// Whether a ClusterRoleBinding binds the role named `role` to the service account
    /// `account`.
    fn binds(&self, role: Option<&String>, account: Option<&String>) -> bool {
        self.cluster_role_bindings.iter().any(|binding| {
            Some(&binding.role_ref.name) == role
                && binding
                    .subjects
                    .iter()
                    .flatten()
                    .any(|s| s.kind == "ServiceAccount" && Some(&s.name) == account)
        })
    }

    fn config_map(&self, name: &str) -> Option<&ConfigMap> {
        self.config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }
}

fn component_of(labels: &Option<BTreeMap<String, String>>) -> Option<&str> {
    labels
        .as_ref()?
        .get("app.kubernetes.io/component")
        .map(String::as_str)
}

/// Every YAML file under `deploy/` except the Helm chart (whose templates are Go templates).
fn plain_manifests() -> Objects {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 7,
        "expected the CRD, namespace, RBAC, config, controller, data-plane and network policy \
         manifests, found {files:?}"
    );
    let mut objects = Objects::default();
    for file in files {
        let origin = file.strip_prefix(repo()).unwrap().display().to_string();
        objects.add_text(&read(&file), &origin);
    }
    objects
}

#[test]
fn every_manifest_under_deploy_is_a_typed_kubernetes_object() {
    let objects = plain_manifests();
    assert_eq!(
        objects.crds.len(),
        rivulet::resources::crds().unwrap().len()
    );
    assert_eq!(objects.namespaces.len(), 1);
    assert_eq!(objects.deployments.len(), 2, "controller and data plane");
    assert_eq!(objects.services.len(), 1, "the ingress Service");
    assert_eq!(objects.service_accounts.len(), 2);
    assert_eq!(
        objects.cluster_roles.len(),
        3,
        "controller, data plane and the addressable resolver"
    );
    assert_eq!(objects.cluster_role_bindings.len(), 3);
    assert_eq!(
        objects.network_policies.len(),
        2,
        "data plane and controller NetworkPolicies"
    );
    for name in [
        "config-br-defaults",
        "kafka-broker-config",
        "nats-broker-config",
    ] {
        assert!(objects.config_map(name).is_some(), "no ConfigMap {name}");
    }
    assert!(
        objects
            .secrets
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some("rabbitmq-broker-config"))
    );
}

#[test]
fn typed_parsing_refuses_unknown_fields_and_kinds() {
    let misspelt: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPrt": 8080}]},
    });
    let result = std::panic::catch_unwind(|| Objects::default().add(&misspelt, "misspelt"));
    assert!(result.is_err(), "a misspelt field passed");
    let unknown: Value = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}});
    let result = std::panic::catch_unwind(|| Objects::default().add(&unknown, "unknown"));
    assert!(result.is_err(), "an unexpected kind passed");
}

// --- workloads ---

fn check_workloads(objects: &Objects, origin: &str) {
    for (component, command) in [("controller", "controller"), ("data-plane", "serve")] {
        let deployment = objects.deployment(component);
        let spec = &deployment.spec;
        let pod = spec.template.spec.as_ref().unwrap();
        let service_account = pod.service_account_name.as_deref().unwrap_or_default();
        assert!(
            objects
                .service_accounts
                .iter()
                .any(|sa| sa.metadata.name.as_deref() == Some(service_account)),
            "{origin}: {component} runs as {service_account:?}, which is not defined"
        );
        let [container] = pod.containers.as_slice() else {
            panic!("{origin}: {component} should have one container");
        };
        check_pod_security(pod, container, &format!("{origin}: {component}"));
        let args = container.args.clone().unwrap_or_default();
        assert_eq!(
            args.first().map(String::as_str),
            Some(command),
            "{origin}: {component}"
        );
        assert!(
            args.iter().any(|a| a == "--listen=0.0.0.0:8080"),
            "{origin}: {component} must listen on all interfaces"
        );
        let ports = container.ports.clone().unwrap_or_default();
        let port_named = |name: &str| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port)
        };
        assert_eq!(port_named("http"), Some(8080), "{origin}: {component}");
        if component == "data-plane" {
            // Events on one listener; health and metrics on the other, which serves no
            // resource API on Kubernetes.
            let api_listen = args
                .iter()
                .find_map(|a| a.strip_prefix("--api-listen="))
                .unwrap_or_else(|| panic!("{origin}: the data plane needs --api-listen"));
            let api_port: i32 = api_listen.rsplit(':').next().unwrap().parse().unwrap();
            assert_ne!(api_port, 8080, "{origin}: two listeners, two ports");
            assert_eq!(
                port_named("metrics"),
                Some(api_port),
                "{origin}: the metrics port is --api-listen's"
            );
        } else {
            assert!(
                !args.iter().any(|a| a.starts_with("--api-listen")),
                "{origin}: the controller has one listener"
            );
        }
        // The command line is one the binary takes.
        let parsed = <rivulet::cli::Cli as clap::Parser>::try_parse_from(
            std::iter::once("rivulet".to_string()).chain(args.iter().cloned()),
        );
        assert!(
            parsed.is_ok(),
            "{origin}: {component} runs `rivulet {}`, which the CLI refuses: {}",
            args.join(" "),
            parsed.unwrap_err()
        );
        // With a read-only root filesystem, the data folder must be a mounted volume.
        let read_only = container
            .security_context
            .as_ref()
            .and_then(|c| c.read_only_root_filesystem)
            == Some(true);
        if read_only {
            let data_dir = args
                .iter()
                .find_map(|a| a.strip_prefix("--data-dir="))
                .unwrap_or_else(|| panic!("{origin}: {component} needs --data-dir"));
            let mounts = container.volume_mounts.clone().unwrap_or_default();
            assert!(
                mounts.iter().any(|m| data_dir.starts_with(&m.mount_path)),
                "{origin}: {component}'s data folder {data_dir} is on the read-only root"
            );
        }
        let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
            probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|g| g.path.clone())
        };
        assert_eq!(
            probe_path(&container.liveness_probe).as_deref(),
            Some("/healthz")
        );
        assert_eq!(
            probe_path(&container.readiness_probe).as_deref(),
            Some("/readyz")
        );
        let requests = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .unwrap_or_else(|| panic!("{origin}: {component} has no resource requests"));
        assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
        assert_eq!(
            container.ports.as_ref().unwrap()[0].container_port,
            8080,
            "{origin}: {component}"
        );
        // The selector picks the pod template's labels.
        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        for (key, value) in spec.selector.match_labels.as_ref().unwrap() {
            assert_eq!(
                template_labels.get(key),
                Some(value),
                "{origin}: {component} selector"
            );
        }
    }
    let args = objects.pod_spec("data-plane").containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.iter().any(|a| a == "--store=kubernetes"),
        "{origin}: {args:?}"
    );

    let [service] = objects.services.as_slice() else {
        panic!("{origin}: expected one Service");
    };
    let service_spec = service.spec.as_ref().unwrap();
    let port = &service_spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 80, "{origin}: ingress Service port");
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into()))
    );
    let pod_labels = pod_labels(objects.deployment("data-plane"));
    for (key, value) in service_spec.selector.as_ref().unwrap() {
        assert_eq!(
            pod_labels.get(key),
            Some(value),
            "{origin}: Service selector"
        );
    }
}

/// Non-root with a fixed UID, read-only root, no privilege escalation, no capabilities,
/// the runtime's default seccomp profile.
fn check_pod_security(
    pod: &k8s_openapi::api::core::v1::PodSpec,
    container: &k8s_openapi::api::core::v1::Container,
    origin: &str,
) {
    let pod_security = pod.security_context.clone().unwrap_or_default();
    let security = container.security_context.clone().unwrap_or_default();
    assert_eq!(
        security.run_as_non_root.or(pod_security.run_as_non_root),
        Some(true),
        "{origin}: runAsNonRoot"
    );
    let uid = security.run_as_user.or(pod_security.run_as_user);
    assert!(
        uid.is_some_and(|uid| uid > 0),
        "{origin}: a fixed non-root UID, not {uid:?}"
    );
    assert_eq!(
        security.allow_privilege_escalation,
        Some(false),
        "{origin}: allowPrivilegeEscalation"
    );
    assert_eq!(
        security.read_only_root_filesystem,
        Some(true),
        "{origin}: readOnlyRootFilesystem"
    );
    assert_eq!(security.privileged, None, "{origin}: privileged");
    let capabilities = security.capabilities.unwrap_or_default();
    assert_eq!(
        capabilities.drop,
        Some(vec!["ALL".to_string()]),
        "{origin}: capabilities drop ALL"
    );
    assert!(
        capabilities.add.is_none_or(|add| add.is_empty()),
        "{origin}: no capability added"
    );
    let seccomp = security
        .seccomp_profile
        .or(pod_security.seccomp_profile)
        .map(|p| p.type_);
    assert_eq!(
        seccomp.as_deref(),
        Some("RuntimeDefault"),
        "{origin}: seccompProfile"
    );
    assert!(
        pod.host_network != Some(true) && pod.host_pid != Some(true),
        "{origin}: host namespaces"
    );
}

fn pod_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn container_of<'a>(objects: &'a Objects, component: &str) -> &'a Container {
    &objects.pod_spec(component).containers[0]
}

/// The NetworkPolicy whose pod selector picks `component`'s pods.
fn policy_for<'a>(objects: &'a Objects, component: &str) -> &'a NetworkPolicySpec {
    let labels = pod_labels(objects.deployment(component));
    objects
        .network_policies
        .iter()
        .filter_map(|policy| policy.spec.as_ref())
        .find(|spec| {
            let selector = spec.pod_selector.clone().unwrap_or_default();
            let wanted = selector.match_labels.clone().unwrap_or_default();
            selector.match_expressions.is_none()
                && wanted
                    .get("app.kubernetes.io/component")
                    .map(String::as_str)
                    == Some(component)
                && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .unwrap_or_else(|| panic!("no NetworkPolicy selects the {component} pods"))
}

/// The data plane's event port is open to the cluster, its metrics port only to the
/// namespaces configured; the controller takes nothing.
fn check_network_policies(objects: &Objects, origin: &str) {
    let ingress_only = Some(vec!["Ingress".to_string()]);
    let data_plane = policy_for(objects, "data-plane");
    assert_eq!(data_plane.policy_types, ingress_only, "{origin}");
    let named: BTreeSet<String> = container_of(objects, "data-plane")
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect();
    let mut ports_seen = BTreeSet::new();
    for rule in data_plane.ingress.iter().flatten() {
        let ports = rule.ports.clone().unwrap_or_default();
        assert!(
            !ports.is_empty(),
            "{origin}: a data-plane rule without ports admits every port"
        );
        let peers = rule.from.clone().unwrap_or_default();
        assert!(
            !peers.is_empty(),
            "{origin}: a data-plane rule without `from` admits the world"
        );
        assert!(
            peers.iter().all(|p| p.ip_block.is_none()),
            "{origin}: no address block outside the cluster is admitted"
        );
        let from_whole_cluster = peers.iter().any(|peer| {
            peer.pod_selector.is_none()
                && peer.namespace_selector.as_ref().is_some_and(|s| {
                    s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                        && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
                })
        });
        for port in ports {
            let Some(IntOrString::String(name)) = port.port else {
                panic!("{origin}: NetworkPolicy ports should name the container's ports");
            };
            assert!(named.contains(&name), "{origin}: no container port {name}");
            match name.as_str() {
                "http" => assert!(
                    from_whole_cluster,
                    "{origin}: events are taken from every namespace by default"
                ),
                "metrics" => assert!(
                    !from_whole_cluster && peers.iter().all(|p| p.namespace_selector.is_some()),
                    "{origin}: metrics only from the namespaces configured"
                ),
                other => panic!("{origin}: port {other} is admitted"),
            }
            ports_seen.insert(name);
        }
    }
    assert_eq!(
        ports_seen,
        BTreeSet::from(["http".to_string(), "metrics".to_string()]),
        "{origin}"
    );

    let controller = policy_for(objects, "controller");
    assert_eq!(controller.policy_types, ingress_only, "{origin}");
    assert!(
        controller
            .ingress
            .as_ref()
            .is_none_or(|rules| rules.is_empty()),
        "{origin}: the controller takes no traffic (probes come from the kubelet)"
    );
}

#[test]
fn network_policies_admit_events_from_the_cluster_and_metrics_from_monitoring_only() {
    check_network_policies(&plain_manifests(), "deploy/network-policy.yaml");
}

/// The image runs as a fixed non-root user, and its default command keeps the resource API
/// on loopback.
#[test]
fn the_image_runs_as_non_root_and_binds_the_api_to_loopback() {
    let dockerfile = read(&repo().join("Dockerfile"));
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("a USER instruction");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric UID (runAsNonRoot needs one)");
    assert!(uid > 0, "USER {user}");
    let cmd = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("CMD "))
        .expect("a CMD instruction");
    let args: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    let api_listen = args
        .iter()
        .find_map(|a| a.strip_prefix("--api-listen="))
        .expect("the default command names --api-listen");
    let addr: std::net::SocketAddr = api_listen.parse().unwrap();
    assert!(addr.ip().is_loopback(), "--api-listen={api_listen}");
    let parsed = <rivulet::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("rivulet".to_string()).chain(args.iter().cloned()),
    );
    assert!(parsed.is_ok(), "CMD {args:?}: {}", parsed.unwrap_err());
}

#[test]
fn deployments_run_the_right_commands_with_probes_and_small_requests() {
    let objects = plain_manifests();
    check_workloads(&objects, "deploy/");
    let replicas = objects.deployment("data-plane").spec.replicas;
    assert!(
        replicas.unwrap_or(1) >= 2,
        "the data plane should run several replicas"
    );
}

// --- RBAC ---

fn check_rbac(objects: &Objects, origin: &str) {
    let crds = rivulet::resources::crds().unwrap();
    for role in &objects.cluster_roles {
        let name = role.metadata.name.clone().unwrap_or_default();
        for rule in role.rules.iter().flatten() {
            for list in [
                Some(&rule.verbs),
                rule.resources.as_ref(),
                rule.api_groups.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                assert!(
                    !list.iter().any(|item| item.contains('*')),
                    "{origin}: ClusterRole {name} has a wildcard in {rule:?}"
                );
            }
            assert!(rule.non_resource_urls.is_none(), "{origin}: {name}");
        }
    }
    let allows = |role: &ClusterRole, group: &str, resource: &str, verb: &str| {
        role.rules.iter().flatten().any(|rule: &PolicyRule| {
            rule.api_groups.iter().flatten().any(|g| g == group)
                && rule.resources.iter().flatten().any(|r| r == resource)
                && rule.verbs.iter().any(|v| v == verb)
        })
    };
    let controller = objects.cluster_role("controller");
    let data_plane = objects.cluster_role("data-plane");
    for crd in &crds {
        let group = &crd.spec.group;
        let plural = &crd.spec.names.plural;
        for verb in ["get", "list", "watch"] {
            assert!(
                allows(controller, group, plural, verb),
                "{origin}: controller cannot {verb} {plural}"
            );
            assert!(
                allows(data_plane, group, plural, verb),
                "{origin}: data plane cannot {verb} {plural}"
            );
        }
        assert!(
            allows(controller, group, plural, "patch"),
            "{origin}: controller cannot patch {plural} (finalizers)"
        );
        let has_status = crd.spec.versions.iter().any(|v| v.subresources.is_some());
        if has_status {
            let status = format!("{plural}/status");
            assert!(
                allows(controller, group, &status, "patch"),
                "{origin}: controller cannot patch {status}"
            );
        }
    }
    for verb in ["get", "list", "watch"] {
        assert!(allows(controller, "", "configmaps", verb));
        assert!(allows(data_plane, "", "configmaps", verb));
    }
    // Secrets: read by the name a resource gives, never listed or watched, by anyone.
    assert!(allows(controller, "", "secrets", "get"));
    assert!(allows(data_plane, "", "secrets", "get"));
    for role in &objects.cluster_roles {
        for rule in role.rules.iter().flatten() {
            if rule.resources.iter().flatten().any(|r| r == "secrets") {
                assert_eq!(
                    rule.verbs,
                    ["get"],
                    "{origin}: {:?} may do more than get Secrets",
                    role.metadata.name
                );
            }
        }
    }
    // Events: the controller's about reconciling, the data plane's about delivery health.
    for role in [controller, data_plane] {
        for group in ["", "events.k8s.io"] {
            assert!(
                allows(role, group, "events", "create"),
                "{origin}: {group} events"
            );
        }
    }
    // Destination refs: Kubernetes Services, Knative Services, and any addressable kind
    // through the aggregated resolver role (checked below with the bindings).
    assert!(allows(controller, "", "services", "get"));
    assert!(allows(controller, "serving.knative.dev", "services", "get"));
    // ApiServerSource acts as the source's service account. Impersonating users, groups or
    // uids would let Rivulet act as anyone (system:masters included): only service accounts.
    assert!(
        allows(controller, "", "serviceaccounts", "impersonate"),
        "{origin}: the controller cannot impersonate service accounts (ApiServerSource)"
    );
    for role in &objects.cluster_roles {
        for rule in role.rules.iter().flatten() {
            if rule.verbs.iter().any(|v| v == "impersonate") {
                assert_eq!(
                    (rule.api_groups.clone(), rule.resources.clone()),
                    (
                        Some(vec![String::new()]),
                        Some(vec!["serviceaccounts".to_string()])
                    ),
                    "{origin}: {:?} impersonates more than service accounts",
                    role.metadata.name
                );
            }
        }
    }
    // The data plane only reads, except that ingress creates EventTypes for the events it
    // sees (a server-side apply: create and patch) and writes their inferred schemas into
    // their status, that senders ask for OIDC tokens (TokenRequest), and that it reports
    // delivery health in Kubernetes Events.
    for rule in data_plane.rules.iter().flatten() {
        let resources = rule.resources.clone().unwrap_or_default();
        let allowed: &[&str] = match resources.as_slice() {
            [r] if r == "eventtypes" => &["get", "list", "watch", "create", "patch"],
            [r] if r == "eventtypes/status" => &["get", "patch"],
            [r] if r == "serviceaccounts/token" => &["create"],
            [r] if r == "events" => &["create", "patch"],
            _ => &["get", "list", "watch"],
        };
        for verb in &rule.verbs {
            assert!(
                allowed.contains(&verb.as_str()),
                "{origin}: the data plane may {verb} {:?}",
                rule.resources
            );
        }
    }
    // Each role is bound to the service account of its Deployment.
    for component in ["controller", "data-plane"] {
        let role = objects.cluster_role(component).metadata.name.clone();
        let account = objects.pod_spec(component).service_account_name.clone();
        assert!(
            objects.binds(role.as_ref(), account.as_ref()),
            "{origin}: {component}'s role is not bound to its service account"
        );
    }
    let resolver = objects
        .addressable_resolver()
        .unwrap_or_else(|| panic!("{origin}: no ClusterRole aggregating addressable roles"));
    let controller_account = objects.pod_spec("controller").service_account_name.clone();
    assert!(
        objects.binds(resolver.metadata.name.as_ref(), controller_account.as_ref()),
        "{origin}: the addressable resolver is not bound to the controller's service account"
    );
}

#[test]
fn rbac_is_least_privilege_and_covers_every_crd() {
    check_rbac(&plain_manifests(), "deploy/rbac.yaml");
}

// --- CRDs ---

fn columns(crd: &CustomResourceDefinition) -> Vec<&str> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect()
}

/// Kubernetes takes only structural schemas: every node typed (or explicitly free-form),
/// no references.
fn check_structural(schema: &JSONSchemaProps, path: &str) {
    let free_form = schema.x_kubernetes_preserve_unknown_fields == Some(true)
        || schema.x_kubernetes_int_or_string == Some(true);
    assert!(
        schema.type_.is_some() || free_form,
        "schema node {path} has no type"
    );
    assert!(
        schema.ref_path.is_none(),
        "schema node {path} is a reference"
    );
    for (name, property) in schema.properties.iter().flatten() {
        check_structural(property, &format!("{path}.{name}"));
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        check_structural(items, &format!("{path}[]"));
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
        check_structural(values, &format!("{path}{{}}"));
    }
}

#[test]
fn crds_carry_knative_groups_columns_categories_and_status() {
    let crds = rivulet::resources::crds().unwrap();
    let by_kind: BTreeMap<&str, &CustomResourceDefinition> = crds
        .iter()
        .map(|crd| (crd.spec.names.kind.as_str(), crd))
        .collect();
    // Knative's kinds keep Knative's group and version.
    for (kind, group, version) in [
        ("Broker", "eventing.knative.dev", "v1"),
        ("Trigger", "eventing.knative.dev", "v1"),
        ("KafkaSink", "eventing.knative.dev", "v1alpha1"),
        ("RabbitmqBrokerConfig", "eventing.knative.dev", "v1alpha1"),
        ("PingSource", "sources.knative.dev", "v1"),
        ("KafkaSource", "sources.knative.dev", "v1beta1"),
        ("RabbitmqSource", "sources.knative.dev", "v1alpha1"),
    ] {
        let crd = by_kind
            .get(kind)
            .unwrap_or_else(|| panic!("no CRD for {kind}"));
        assert_eq!(crd.spec.group, group, "{kind}");
        assert!(
            crd.spec
                .versions
                .iter()
                .any(|v| v.name == version && v.served && v.storage),
            "{kind} {version}"
        );
    }
    assert_eq!(
        columns(by_kind["Broker"]),
        ["URL", "Age", "Ready", "Reason", "Class"]
    );
    assert_eq!(
        columns(by_kind["Trigger"]),
        ["Broker", "Subscriber_URI", "Age", "Ready", "Reason"]
    );
    assert_eq!(
        columns(by_kind["KafkaSink"]),
        ["URL", "Age", "Ready", "Reason"]
    );
    assert!(
        by_kind["Broker"].spec.names.short_names.is_none(),
        "Knative's Broker has no short name"
    );

    for crd in &crds {
        let name = crd.metadata.name.as_deref().unwrap();
        assert_eq!(crd.spec.scope, "Namespaced", "{name}");
        assert_eq!(
            name,
            format!("{}.{}", crd.spec.names.plural, crd.spec.group),
            "CRD name"
        );
        let categories = crd.spec.names.categories.clone().unwrap_or_default();
        assert!(
            categories.iter().any(|c| c == "knative"),
            "{name}: {categories:?}"
        );
        for version in &crd.spec.versions {
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .unwrap_or_else(|| panic!("{name} {} has no schema", version.name));
            check_structural(schema, name);
            let has_status = schema
                .properties
                .as_ref()
                .is_some_and(|p| p.contains_key("status"));
            if !has_status {
                continue;
            }
            assert!(
                version
                    .subresources
                    .as_ref()
                    .is_some_and(|s| s.status.is_some()),
                "{name} {}: no status subresource",
                version.name
            );
            let columns = columns(crd);
            for column in ["Age", "Ready", "Reason"] {
                assert!(
                    columns.contains(&column),
                    "{name}: no {column} column in {columns:?}"
                );
            }
            assert!(
                categories.iter().any(|c| c == "all"),
                "{name}: {categories:?}"
            );
            let group = crd.spec.group.as_str();
            if group.starts_with("sources.") {
                assert!(columns.contains(&"Sink"), "{name}: sources show their Sink");
                assert!(
                    categories.iter().any(|c| c == "sources"),
                    "{name}: {categories:?}"
                );
                let labels = crd.metadata.labels.clone().unwrap_or_default();
                assert_eq!(
                    labels.get("duck.knative.dev/source").map(String::as_str),
                    Some("true")
                );
            }
            if group.starts_with("sinks.") || crd.spec.names.kind.ends_with("Sink") {
                assert!(columns.contains(&"URL"), "{name}: sinks show their URL");
            }
        }
    }
}

// --- Helm ---

fn chart() -> PathBuf {
    deploy().join("helm/rivulet")
}

#[test]
fn helm_chart_metadata_and_values_parse_and_name_every_backend() {
    let meta: Value = serde_saphyr::from_str(&read(&chart().join("Chart.yaml"))).unwrap();
    assert_eq!(meta["apiVersion"], "v2");
    assert_eq!(meta["name"], "rivulet");
    assert_eq!(meta["appVersion"], env!("CARGO_PKG_VERSION"));
    let values: Value = serde_saphyr::from_str(&read(&chart().join("values.yaml"))).unwrap();
    let backend = values["backend"].as_str().unwrap();
    assert!(BACKENDS.contains(&backend), "default backend {backend}");
    for section in ["kafka", "rabbitmq", "nats", "embedded"] {
        assert!(
            values[section].is_object(),
            "values.yaml has no {section} settings"
        );
    }
    let schema: Value = serde_json::from_str(&read(&chart().join("values.schema.json"))).unwrap();
    let allowed: BTreeSet<&str> = schema["properties"]["backend"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(allowed, BTreeSet::from(BACKENDS));
    // The chart installs the same CRDs (checked byte for byte above) and nothing else there.
    let crd_files: Vec<_> = std::fs::read_dir(chart().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(crd_files, ["crds.yaml"]);
}

/// Renders the chart for each backend with Helm's own engine, through the `helm-python-sdk`
/// package, and prints `{backend: {template: manifest}, "lint": report}` as JSON.
const RENDER_SCRIPT: &str = r#"
import json, sys
import helm_python as helm
chart = helm.Chart.load(sys.argv[1])
out = {}
for backend in sys.argv[3:]:
    out[backend] = chart.render({"backend": backend}, name="rivulet", namespace="rivulet")
out["lint"] = helm.lint(sys.argv[1], strict=True)
out["variants"] = {
    name: chart.render(values, name="rivulet", namespace="rivulet")
    for name, values in json.loads(sys.argv[2]).items()
}
try:
    chart.render({"backend": "no-such-backend"}, name="rivulet", namespace="rivulet")
    out["bad_backend_refused"] = False
except helm.HelmError:
    out["bad_backend_refused"] = True
print(json.dumps(out))
"#;

/// Values rendered besides the defaults, to check what they change.
fn variants() -> Value {
    serde_json::json!({
        "no-network-policy": {"backend": "kafka", "networkPolicy": {"enabled": false}},
        "custom": {
            "backend": "kafka",
            "dataPlane": {"ingress": {"port": 9000}, "metrics": {"port": 9100}},
            "egress": {"allow": ["hooks.example.com"], "deny": ["10.0.0.0/8"]},
            "networkPolicy": {
                "ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}],
            },
        },
    })
}

/// The rendered objects of one set of values.
fn rendered_objects(rendered: &Value, origin: &str) -> Objects {
    let mut objects = Objects::default();
    for (template, manifest) in rendered.as_object().unwrap() {
        if template.ends_with(".yaml") {
            objects.add_text(manifest.as_str().unwrap(), &format!("{origin}: {template}"));
        }
    }
    objects
}

/// What the chart's listener, NetworkPolicy and egress values change.
fn check_helm_variants(rendered: &Value) {
    let off = rendered_objects(
        &rendered["no-network-policy"],
        "networkPolicy.enabled=false",
    );
    assert!(
        off.network_policies.is_empty(),
        "networkPolicy.enabled=false still renders NetworkPolicies"
    );

    let custom = rendered_objects(&rendered["custom"], "custom values");
    let container = container_of(&custom, "data-plane");
    let args = container.args.clone().unwrap_or_default();
    assert!(
        args.contains(&"--listen=0.0.0.0:9000".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--api-listen=0.0.0.0:9100".to_string()),
        "{args:?}"
    );
    let ports: BTreeMap<String, i32> = container
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([("http".to_string(), 9000), ("metrics".to_string(), 9100)])
    );
    for component in ["data-plane", "controller"] {
        let args = container_of(&custom, component)
            .args
            .clone()
            .unwrap_or_default();
        for flag in [
            "--egress-allow=hooks.example.com",
            "--egress-deny=10.0.0.0/8",
        ] {
            assert!(args.iter().any(|a| a == flag), "{component}: {args:?}");
        }
        let parsed = <rivulet::cli::Cli as clap::Parser>::try_parse_from(
            std::iter::once("rivulet".to_string()).chain(args.iter().cloned()),
        );
        assert!(
            parsed.is_ok(),
            "{component}: {args:?}: {}",
            parsed.unwrap_err()
        );
    }
    let events_from: Vec<Value> = policy_for(&custom, "data-plane")
        .ingress
        .iter()
        .flatten()
        .filter(|rule| {
            rule.ports
                .iter()
                .flatten()
                .any(|p| p.port == Some(IntOrString::String("http".into())))
        })
        .flat_map(|rule| rule.from.iter().flatten())
        .map(|peer| serde_json::to_value(peer).unwrap())
        .collect();
    assert_eq!(
        events_from,
        [serde_json::json!({"namespaceSelector": {"matchLabels": {"team": "a"}}})],
        "networkPolicy.ingressFrom replaces the whole cluster"
    );
}

/// A Python that can import `helm_python`: `RIVULET_HELM_PYTHON`, the test cache's venv, or
/// `python3`.
fn helm_python() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(explicit) = std::env::var_os("RIVULET_HELM_PYTHON") {
        candidates.push(PathBuf::from(explicit));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/rivulet-test/helm-venv/bin/python"));
    }
    candidates.push(PathBuf::from("python3"));
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import helm_python"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn helm_chart_renders_valid_objects_for_every_backend() {
    let Some(python) = helm_python() else {
        eprintln!(
            "skipping the Helm render: no Python with helm-python-sdk (Helm's engine) found; \
             see deploy/README.md to install it"
        );
        return;
    };
    let output = Command::new(&python)
        .arg("-c")
        .arg(RENDER_SCRIPT)
        .arg(chart())
        .arg(variants().to_string())
        .args(BACKENDS)
        .output()
        .expect("python runs");
    rivulet_testkit::assert_succeeded(&output, "rendering the chart");
    let rendered: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        rendered["bad_backend_refused"], true,
        "values.schema.json lets an unknown backend through"
    );
    let lint_errors = rendered["lint"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["severity"].as_i64().unwrap_or(0) >= 2)
        .collect::<Vec<_>>();
    assert!(lint_errors.is_empty(), "helm lint: {lint_errors:?}");

    check_helm_variants(&rendered["variants"]);
    let plain = plain_manifests();
    for backend in BACKENDS {
        let mut objects = Objects::default();
        for (template, manifest) in rendered[backend].as_object().unwrap() {
            if template.ends_with(".yaml") {
                objects.add_text(
                    manifest.as_str().unwrap(),
                    &format!("{backend}: {template}"),
                );
            }
        }
        let origin = format!("helm (backend {backend})");
        check_workloads(&objects, &origin);
        check_network_policies(&objects, &origin);
        // The CRDs come from crds/, not templates; RBAC must still cover them.
        check_rbac(&objects, &origin);
        for component in ["controller", "data-plane"] {
            assert_eq!(
                objects.cluster_role(component).rules,
                plain.cluster_role(component).rules,
                "{origin}: the chart's {component} role differs from deploy/rbac.yaml"
            );
        }
        assert_eq!(
            objects.addressable_resolver().map(|r| &r.aggregation_rule),
            plain.addressable_resolver().map(|r| &r.aggregation_rule),
            "{origin}: the chart's addressable resolver differs from deploy/rbac.yaml"
        );
        let defaults = objects
            .config_map("config-br-defaults")
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get("default-br-config"))
            .unwrap_or_else(|| panic!("{origin}: no config-br-defaults"));
        let defaults: Value = serde_saphyr::from_str(defaults).unwrap();
        let class = defaults["clusterDefault"]["brokerClass"].as_str().unwrap();
        let replicas = objects.deployment("data-plane").spec.replicas;
        let (expected_class, config_kind, config_name) = match backend {
            "kafka" => ("Kafka", "ConfigMap", "kafka-broker-config"),
            "rabbitmq" => ("RabbitMQBroker", "Secret", "rabbitmq-broker-config"),
            "nats" => ("NatsJetStreamBroker", "ConfigMap", "nats-broker-config"),
            _ => ("MTChannelBasedBroker", "", ""),
        };
        assert_eq!(class, expected_class, "{origin}");
        if backend == "embedded" {
            assert_eq!(
                replicas,
                Some(1),
                "{origin}: the embedded log allows one replica"
            );
            assert_eq!(
                objects.claims.len(),
                1,
                "{origin}: the embedded log needs a volume"
            );
            assert!(defaults["clusterDefault"].get("name").is_none());
        } else {
            assert_eq!(replicas, Some(3), "{origin}");
            assert!(objects.claims.is_empty(), "{origin}");
            assert_eq!(defaults["clusterDefault"]["kind"], config_kind, "{origin}");
            assert_eq!(defaults["clusterDefault"]["name"], config_name, "{origin}");
            let present = objects.config_map(config_name).is_some()
                || objects
                    .secrets
                    .iter()
                    .any(|s| s.metadata.name.as_deref() == Some(config_name));
            assert!(present, "{origin}: {config_name} is not rendered");
        }
        // Only the chosen backend's settings are rendered.
        let backend_objects = objects.config_maps.len() + objects.secrets.len();
        assert_eq!(
            backend_objects,
            if backend == "embedded" { 1 } else { 2 },
            "{origin}: config-br-defaults plus the backend's settings"
        );
    }
}
