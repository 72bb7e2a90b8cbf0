//! The `rivulet` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod client;
mod eventtypes;
mod graph;
mod journal;
mod local;

/// The resource API's default address (`rivulet serve --api-listen`).
const DEFAULT_SERVER: &str = "http://127.0.0.1:8081";
/// Ingress's default address (`rivulet serve --listen`).
const DEFAULT_INGRESS: &str = "http://127.0.0.1:8080";

/// Rivulet: a CloudEvents broker that speaks the Knative Eventing API.
///
/// Start a server with `rivulet serve`; it has a broker `default/default` ready at
/// http://127.0.0.1:8080/default/default, and its resource API on http://127.0.0.1:8081
/// (token in .rivulet/admin.token, which the CLI finds). Apply Knative Broker and Trigger YAML
/// with `rivulet apply -f`, send events with `rivulet send` (or curl), and watch them arrive
/// with `rivulet display`.
#[derive(Debug, Parser)]
#[command(name = "rivulet", version, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info`, `rivulet=debug`.
    #[arg(long, global = true, env = "RIVULET_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run brokers, triggers and their delivery in this process.
    ///
    /// Resources come from --config files and from the resource API; they and the events
    /// in durable channels are kept in --data-dir and survive restarts.
    ///
    /// Traces are exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT (or
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; OTEL_EXPORTER_OTLP_PROTOCOL is `grpc` or
    /// `http/protobuf` (the default). See docs/tracing.md.
    Serve(Box<ServeArgs>),
    /// Run the Kubernetes controller: reconcile the custom resources in the cluster.
    ///
    /// It resolves destinations, creates and removes backend resources (topics, exchanges,
    /// streams, queues, consumers) with finalizers, writes status, reports failures as
    /// Kubernetes Events and runs the sources that must run once (PingSource,
    /// ApiServerSource). Events flow
    /// through the data plane (`rivulet serve --store kubernetes`), not through it.
    Controller(ControllerArgs),
    /// Create or update resources from a YAML (or JSON) manifest; `-f -` reads stdin.
    Apply {
        /// Manifest file or folder; many documents per file are fine.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List resources of a kind, or show one.
    ///
    /// KIND is a kind name or its plural, in any case (broker, Brokers, triggers, ...); the
    /// list of every kind follows.
    #[command(after_long_help = kinds_help())]
    Get {
        kind: String,
        name: Option<String>,
        #[arg(
            short,
            long,
            default_value = "default",
            conflicts_with = "all_namespaces"
        )]
        namespace: String,
        /// List the kind in every namespace (not for one NAME, nor for ConfigMaps and Secrets).
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output: table (default), wide (more columns), yaml or json.
        #[arg(short, long, default_value = "table")]
        output: OutputFormat,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a resource. A broker or trigger that still holds undelivered events is only
    /// deleted with --force.
    Delete {
        kind: String,
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Delete a broker or trigger even though it holds undelivered events: deliveries in
        /// flight get the server's --delete-grace, the rest go to the dead-letter sink where
        /// one is set and are dropped (and counted) otherwise.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Post one CloudEvent to a broker (or any URL).
    Send(SendArgs),
    /// Show how events flow: sources → brokers → triggers → subscribers, with each broker's
    /// channel and the sinks and dead-letter sinks, and the event rate on every arrow.
    ///
    /// Built from the live objects on the server. Rates are events per second over the last
    /// minute (or since the object appeared), measured by the server; `-` means not measured
    /// yet. Not-ready objects show their reason. `-o dot` is for Graphviz
    /// (`rivulet graph -o dot | dot -Tpng -o graph.png`); `-o svg` is drawn by Rivulet itself
    /// (`rivulet graph -o svg > graph.svg`).
    Graph(graph::GraphArgs),
    /// Trigger filter tools.
    Filter {
        #[command(subcommand)]
        command: FilterCommand,
    },
    /// CloudEvents SQL tools.
    Cesql {
        #[command(subcommand)]
        command: CesqlCommand,
    },
    /// Discover the event types brokers carry: list them, show one's schema and sample, or
    /// scaffold a function for one.
    ///
    /// EventTypes are created automatically for each (broker, type, source) ingress accepts
    /// (unless the server runs with --no-eventtype-autocreate); their payload schema is
    /// inferred from the events and kept in the EventType's status.
    #[command(name = "eventtypes", visible_alias = "eventtype")]
    EventTypes {
        #[command(subcommand)]
        command: eventtypes::EventTypesCommand,
    },
    /// Where did my event go? Read the event journal: each event's arrival, every
    /// trigger's verdict, every delivery attempt and its outcome.
    ///
    /// The server keeps the journal for --journal-retention (1h) and --journal-max-bytes
    /// (64Mi) unless started with --no-journal.
    Events {
        #[command(subcommand)]
        command: journal::EventsCommand,
    },
    /// Stream a broker's events live as they arrive, with each trigger's outcome.
    ///
    /// Example: rivulet tap default/default --filter "type LIKE 'com.example.%'"
    Tap {
        /// The broker: NAMESPACE/NAME, or NAME in namespace `default`.
        broker: String,
        /// Only events this CESQL expression is true for.
        #[arg(long)]
        filter: Option<String>,
        /// Output: text (default) or json (one object per line).
        #[arg(short, long, default_value = "text")]
        output: journal::JournalOutput,
        /// Stop after this many events.
        #[arg(long)]
        max_events: Option<u64>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print the CustomResourceDefinitions of every kind Rivulet serves (multi-document YAML).
    ///
    /// These are the CRDs to install before running Rivulet on Kubernetes; deploy/crds.yaml
    /// holds the same output.
    Crds {
        /// Output: yaml (default) or json.
        #[arg(short, long, default_value = "yaml")]
        output: OutputFormat,
        /// Write to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        to: Option<PathBuf>,
    },
    /// Listen for CloudEvents and print each one (an event display sink).
    Display {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
    },
    /// Manage the resource API's tokens: `viewer` tokens read, `admin` tokens also write.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Check or repair the files in a data dir (resources and embedded logs); the server
    /// must not be running.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// List damaged files (empty, truncated, garbled); exits 1 when there are any. Changes
    /// nothing.
    Check {
        /// The data dir `rivulet serve` uses.
        #[arg(long, env = "RIVULET_DATA_DIR", default_value = ".rivulet")]
        data_dir: PathBuf,
    },
    /// Keep every intact record of each damaged file and move the file aside as
    /// NAME.damaged-TIME: an embedded log is rebuilt from its readable events and
    /// subscriptions; a damaged resource file is moved aside, to be applied again.
    Repair {
        /// The data dir `rivulet serve` uses.
        #[arg(long, env = "RIVULET_DATA_DIR", default_value = ".rivulet")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (it is shown once; the server keeps only its digest).
    Create {
        /// What the token may do.
        #[arg(long, value_enum)]
        role: TokenRole,
        /// A name to list and revoke it by (default: the role and a random suffix).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List the tokens' names and roles.
    List {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Revoke a token by name.
    Revoke {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TokenRole {
    Viewer,
    Admin,
}

#[derive(Debug, Args)]
pub struct ServerArg {
    /// URL of the Rivulet server's resource API (its --api-listen).
    #[arg(long, env = "RIVULET_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// Bearer token for the resource API; without it, RIVULET_TOKEN, then the admin token in
    /// --data-dir.
    #[arg(long, env = "RIVULET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's data folder, where its admin.token is found.
    #[arg(long, env = "RIVULET_DATA_DIR", default_value = ".rivulet")]
    data_dir: PathBuf,
}

impl ServerArg {
    fn remote(&self) -> client::Remote {
        client::Remote::new(&self.server, self.token.as_deref(), &self.data_dir)
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Table,
    Wide,
    Yaml,
    Json,
}

/// Every kind `get`, `delete` and `apply` take, for `get --help`.
fn kinds_help() -> String {
    let mut text = String::from("Kinds:\n");
    for kind in crate::resources::kinds() {
        text.push_str(&format!(
            "  {:<28} {:<32} {}\n",
            kind.kind,
            kind.plural,
            kind.api_version()
        ));
    }
    text
}

#[derive(Debug, Args)]
struct ControllerArgs {
    /// Address for health and metrics (the controller serves nothing else).
    #[arg(long, env = "RIVULET_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Folder for the state of the sources the controller runs (PingSource's last tick).
    #[arg(long, env = "RIVULET_DATA_DIR", default_value = ".rivulet")]
    data_dir: PathBuf,
    /// The data plane's URL, written as brokers' status.address.url
    /// (e.g. http://broker-ingress.rivulet.svc.cluster.local).
    #[arg(long, env = "RIVULET_ADVERTISED_URL")]
    advertised_url: String,
    /// Timeout of one delivery request of the sources the controller runs.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    delivery_timeout: Duration,
    /// Longest wait between retries of those deliveries.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    backoff_cap: Duration,
    /// How long SIGTERM waits for deliveries in flight.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Allow outbound requests only to this CIDR, address or host name (`*.domain` for the
    /// names below it); repeatable. Without it every address is allowed except link-local,
    /// cloud metadata, unspecified, multicast and broadcast ones (which an entry naming them
    /// lifts).
    #[arg(long = "egress-allow", value_name = "CIDR|HOST", value_parser = parse_egress_rule)]
    egress_allow: Vec<crate::egress::EgressRule>,
    /// Refuse outbound requests to this CIDR, address or host name; repeatable. Wins over
    /// --egress-allow. Checked on the addresses a name resolves to.
    #[arg(long = "egress-deny", value_name = "CIDR|HOST", value_parser = parse_egress_rule)]
    egress_deny: Vec<crate::egress::EgressRule>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Manifest file or folder to apply at start (repeatable). Without one, a broker
    /// `default/default` is created if it does not exist.
    #[arg(short, long)]
    config: Vec<PathBuf>,
    /// Address for event ingress (brokers, source and sink endpoints) and health.
    #[arg(long, env = "RIVULET_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address for the resource API, token management, xRegistry, the web console (/ui/),
    /// metrics and health. With --store kubernetes it serves health and metrics only.
    #[arg(long, env = "RIVULET_API_LISTEN", default_value = "127.0.0.1:8081")]
    api_listen: SocketAddr,
    /// How the resource API authenticates: `token` (bearer tokens; the admin token is
    /// written to --data-dir/admin.token at first start) or `none` (anyone reaching the
    /// API is admin; refused on a non-loopback --api-listen without --force-insecure-api).
    #[arg(long, env = "RIVULET_API_AUTH", value_enum, default_value = "token")]
    api_auth: crate::api::auth::ApiAuth,
    /// Allow --api-auth none on an address other than loopback.
    #[arg(long)]
    force_insecure_api: bool,
    /// Folder for resources and the embedded channel's data.
    #[arg(long, env = "RIVULET_DATA_DIR", default_value = ".rivulet")]
    data_dir: PathBuf,
    /// Largest request body ingress accepts, in bytes (larger gets 413).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    body_limit: usize,
    /// Timeout of one delivery request when delivery.timeout is not set.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    delivery_timeout: Duration,
    /// Longest wait between retries, whatever backoff or Retry-After ask for.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    backoff_cap: Duration,
    /// Deliveries in flight per trigger, unless the trigger's rivulet.dev/parallelism
    /// annotation says otherwise.
    #[arg(long, default_value_t = 64)]
    parallelism: usize,
    /// How long SIGTERM waits for deliveries in flight before handing them back.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// How long deleting a broker or trigger waits for its deliveries in flight; what is
    /// still undelivered then goes to the dead-letter sink, or is dropped and counted.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    delete_grace: Duration,
    /// URL brokers advertise in status.address.url (default: http:// + --listen).
    #[arg(long)]
    advertised_url: Option<String>,
    /// Do not create EventTypes from the events brokers accept. Schemas are still inferred
    /// for EventTypes applied by hand.
    #[arg(long)]
    no_eventtype_autocreate: bool,
    /// Source patterns per (broker, type) that get an EventType of their own; events from
    /// further sources share one EventType whose source is left open.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10000))]
    eventtype_sources_per_type: u32,
    /// EventTypes auto-created per broker at most. Past it, events are still accepted (202)
    /// but get no EventType; they are counted in rivulet_eventtypes_capped_total and the
    /// broker is logged once. EventTypes applied by hand are not counted nor limited.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    eventtype_max_per_broker: u32,
    /// Bytes of events a memory channel (a broker whose channel template is
    /// InMemoryChannel) holds at most, unless the broker's config sets maxBytes. An event
    /// counts until every trigger has acknowledged it; when full, ingress answers 503 with
    /// Retry-After. A number of bytes or a size such as 64Mi or 1G.
    #[arg(long, default_value = "256Mi", value_parser = parse_byte_size)]
    memory_channel_max_bytes: u64,
    /// Where resources are kept: `file` (JSON files under --data-dir) or `kubernetes` (the API
    /// server of the in-cluster service account or of the kubeconfig). With `kubernetes` this
    /// process is the data plane beside `rivulet controller`: it delivers to what the
    /// controller resolved, writes no status (EventTypes aside) and creates no default broker.
    #[arg(long, env = "RIVULET_STORE", value_enum, default_value = "file")]
    store: crate::server::StoreChoice,
    /// A Knative feature flag as NAME=VALUE (repeatable), over the `config-features`
    /// ConfigMap: authentication-oidc=enabled, default-authorization-mode=deny-all,
    /// transport-encryption=strict, ...
    #[arg(long = "feature", value_name = "NAME=VALUE", value_parser = parse_feature)]
    features: Vec<(String, String)>,
    /// Allow outbound requests only to this CIDR, address or host name (`*.domain` for the
    /// names below it); repeatable. Without it every address is allowed except link-local,
    /// cloud metadata, unspecified, multicast and broadcast ones (which an entry naming them
    /// lifts).
    #[arg(long = "egress-allow", value_name = "CIDR|HOST", value_parser = parse_egress_rule)]
    egress_allow: Vec<crate::egress::EgressRule>,
    /// Refuse outbound requests to this CIDR, address or host name; repeatable. Wins over
    /// --egress-allow. Checked on the addresses a name resolves to.
    #[arg(long = "egress-deny", value_name = "CIDR|HOST", value_parser = parse_egress_rule)]
    egress_deny: Vec<crate::egress::EgressRule>,
    /// PEM certificate chain (leaf first) for https on --listen. Served when
    /// transport-encryption is permissive (http and https on the same port) or strict (https
    /// only; plain http gets 426). Read again every few seconds: a changed file is served to
    /// new connections without a restart, and a bad one is logged while the previous
    /// certificate stays.
    #[arg(
        long,
        env = "RIVULET_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "RIVULET_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// PEM of the CA that signed --tls-cert, published as CACerts in brokers' https
    /// addresses (default: the --tls-cert chain itself).
    #[arg(
        long,
        env = "RIVULET_TLS_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_ca: Option<PathBuf>,
    /// Take the https certificate from this Kubernetes TLS Secret in the resource store
    /// instead of files: data["tls.crt"] (chain, leaf first), data["tls.key"] and optional
    /// data["ca.crt"] (published as CACerts; default: the chain), base64 as in Kubernetes.
    /// Read at start (missing or unusable: the server does not start); a changed Secret is
    /// served to new connections without a restart, and a bad one is logged while the
    /// previous certificate stays. With --store kubernetes it is read by name, every 10 s.
    #[arg(
        long,
        env = "RIVULET_TLS_SECRET",
        value_name = "NAMESPACE/NAME",
        value_parser = parse_tls_secret,
        conflicts_with_all = ["tls_cert", "tls_key", "tls_ca"]
    )]
    tls_secret: Option<crate::tls::SecretRef>,
    /// An OIDC issuer whose tokens ingress accepts when authentication-oidc is enabled
    /// (repeatable); its keys come from {URL}/.well-known/openid-configuration. Rivulet
    /// always trusts its own issuer.
    #[arg(long = "oidc-issuer", value_name = "URL")]
    oidc_issuers: Vec<String>,
    /// Largest successful subscriber response (a reply event) read, in bytes; beyond it the
    /// delivery attempt fails without reading further and the event goes to the dead-letter
    /// sink (if any) with the reason in knativeerrordata.
    #[arg(long, default_value_t = crate::delivery::REPLY_LIMIT)]
    max_response_body: usize,
    /// A new connection must send its first request's headers (after the TLS handshake, if
    /// any) within this, and each HTTP/1 request's headers, including the wait for the next
    /// request on a kept-alive connection, must arrive within it; else the connection is
    /// closed.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2, and any
    /// connection between requests).
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration)]
    idle_timeout: Duration,
    /// A request whose body is not received and answered within this gets 408.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration)]
    request_timeout: Duration,
    /// Connections open at once per listener; further ones are closed on arrival (counted in
    /// rivulet_connections_refused_total). Default: what the open-files limit leaves room
    /// for (1024 files kept aside, the rest shared by the listeners), between 64 and 10000.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Header fields per request; more get 431.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10000))]
    max_headers: u32,
    /// Bytes of request line and headers (HTTP/1) or of the header list (HTTP/2); more get
    /// 431. At least 8192.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(8192..))]
    max_header_bytes: u32,
    /// Streams one HTTP/2 connection may have open at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    http2_max_concurrent_streams: u32,
    /// Do not keep the event journal (what `rivulet events` and `rivulet tap` read).
    #[arg(long, env = "RIVULET_NO_JOURNAL")]
    no_journal: bool,
    /// Bytes the event journal keeps at most, in memory and in --data-dir/journal each;
    /// the oldest events go first.
    #[arg(long, default_value = "64Mi", value_parser = parse_byte_size)]
    journal_max_bytes: u64,
    /// How long the event journal keeps an event's path.
    #[arg(long, default_value = "1h", value_parser = parse_positive_duration)]
    journal_retention: Duration,
}

/// A duration above zero: a zero timeout would close every connection at once.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be longer than zero (e.g. 10s)".into());
    }
    Ok(duration)
}

fn parse_byte_size(text: &str) -> Result<u64, String> {
    rivulet_channels::parse_size(text)
        .filter(|n| *n > 0)
        .map(|n| n as u64)
        .ok_or_else(|| {
            format!("{text:?} is not a size; expected bytes such as 268435456, 256Mi or 1G")
        })
}

fn parse_egress_rule(entry: &str) -> Result<crate::egress::EgressRule, String> {
    entry
        .parse()
        .map_err(|e: crate::egress::EgressRuleError| e.to_string())
}

fn parse_tls_secret(text: &str) -> Result<crate::tls::SecretRef, String> {
    text.parse()
        .map_err(|e: crate::tls::TlsError| e.to_string())
}

fn parse_feature(pair: &str) -> Result<(String, String), String> {
    let mut check = crate::features::Features::default();
    check.set_pair(pair).map_err(|e| e.to_string())?;
    let (name, value) = pair.split_once('=').expect("checked above");
    Ok((name.trim().to_string(), value.trim().to_string()))
}

#[derive(Debug, Args)]
struct SendArgs {
    /// Broker as NAMESPACE/NAME (or just NAME in namespace default).
    #[arg(long, default_value = "default/default", conflicts_with = "url")]
    broker: String,
    /// Post to this URL instead of a broker of --ingress.
    #[arg(long)]
    url: Option<String>,
    /// URL of the Rivulet server's ingress (its --listen).
    #[arg(long, env = "RIVULET_INGRESS", default_value = DEFAULT_INGRESS)]
    ingress: String,
    #[arg(long = "type", required = true)]
    ty: String,
    #[arg(long, default_value = "rivulet-cli")]
    source: String,
    /// Event id (default: a random UUID).
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    subject: Option<String>,
    /// Data as text.
    #[arg(long, conflicts_with = "data_file")]
    data: Option<String>,
    /// Data read from a file.
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// Content type of the data (default application/json when there is data).
    #[arg(long)]
    content_type: Option<String>,
    /// Extension attribute NAME=VALUE (repeatable).
    #[arg(long = "ext", value_parser = parse_key_value)]
    extensions: Vec<(String, String)>,
    /// Send in structured mode (application/cloudevents+json) instead of binary.
    #[arg(long)]
    structured: bool,
}

#[derive(Debug, Subcommand)]
enum FilterCommand {
    /// Does this trigger's filter match this event? Prints `match` or `no match` (exit 0 or 1).
    Eval {
        /// Trigger manifest (YAML); its spec.filter / spec.filters are evaluated.
        #[arg(long)]
        trigger: PathBuf,
        /// Event as structured JSON (application/cloudevents+json).
        #[arg(long)]
        event: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CesqlCommand {
    /// Evaluate an expression against an event; prints the value and the error kind.
    Eval {
        expression: String,
        /// Event as structured JSON (application/cloudevents+json).
        #[arg(long)]
        event: Option<PathBuf>,
        /// Output: text (default) or json.
        #[arg(short, long, default_value = "text")]
        output: String,
    },
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        // Colour only for a person at a terminal, never in a file or a log collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    crate::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            say(&format!("error: {error:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve(*args).await,
        Command::Controller(args) => controller(args).await,
        Command::Apply { files, server } => client::apply(&server.remote(), &files).await,
        Command::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
            server,
        } => {
            let scope = if all_namespaces {
                client::Scope::AllNamespaces
            } else {
                client::Scope::Namespace(&namespace)
            };
            client::get(&server.remote(), &kind, name.as_deref(), scope, output).await
        }
        Command::Delete {
            kind,
            name,
            namespace,
            force,
            server,
        } => client::delete(&server.remote(), &kind, &name, &namespace, force).await,
        Command::Token { command } => token(command).await,
        Command::Store { command } => store(command).await,
        Command::Send(args) => client::send(args).await,
        Command::Graph(args) => graph::run(args).await,
        Command::Filter {
            command: FilterCommand::Eval { trigger, event },
        } => local::filter_eval(&trigger, &event),
        Command::Cesql {
            command:
                CesqlCommand::Eval {
                    expression,
                    event,
                    output,
                },
        } => local::cesql_eval(&expression, event.as_deref(), &output),
        Command::EventTypes { command } => eventtypes::run(command).await,
        Command::Events { command } => journal::events(command).await,
        Command::Tap {
            broker,
            filter,
            output,
            max_events,
            server,
        } => journal::tap(&broker, filter, output, max_events, server.remote()).await,
        Command::Crds { output, to } => local::crds(output, to.as_deref()),
        Command::Display { listen } => {
            rivulet_sinks::display::serve(listen).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn store(command: StoreCommand) -> anyhow::Result<ExitCode> {
    match command {
        StoreCommand::Check { data_dir } => {
            let damage = tokio::task::spawn_blocking(move || {
                crate::store::check::check(&data_dir).map(|damage| (data_dir, damage))
            })
            .await??;
            let (data_dir, damage) = damage;
            if damage.is_empty() {
                println!("{}: no damaged files", data_dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            println!("{}", crate::store::check::refusal(&data_dir, &damage));
            Ok(ExitCode::FAILURE)
        }
        StoreCommand::Repair { data_dir } => {
            let repaired = tokio::task::spawn_blocking(move || {
                crate::store::check::repair(&data_dir).map(|repaired| (data_dir, repaired))
            })
            .await??;
            let (data_dir, repaired) = repaired;
            if repaired.is_empty() {
                println!("{}: no damaged files", data_dir.display());
            }
            for item in repaired {
                println!(
                    "{}: {} (the damaged file is now {})",
                    item.path.display(),
                    item.outcome,
                    item.moved_to.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut features = crate::features::Features::default();
    for (name, value) in &args.features {
        features.set(name, value)?;
    }
    let options = crate::server::ServeOptions {
        config: args.config,
        listen: args.listen,
        api_listen: args.api_listen,
        api_auth: args.api_auth,
        force_insecure_api: args.force_insecure_api,
        data_dir: args.data_dir,
        body_limit: args.body_limit,
        delivery: crate::delivery::DeliveryDefaults {
            timeout: args.delivery_timeout,
            backoff_cap: args.backoff_cap,
            max_response_body: args.max_response_body,
        },
        default_parallelism: args.parallelism.max(1),
        shutdown_grace: args.shutdown_grace,
        delete_grace: args.delete_grace,
        advertised_url: args.advertised_url,
        discovery: crate::discovery::DiscoverySettings {
            autocreate: !args.no_eventtype_autocreate,
            max_sources_per_type: args.eventtype_sources_per_type as usize,
            max_per_broker: args.eventtype_max_per_broker as usize,
            ..Default::default()
        },
        memory_channel_max_bytes: args.memory_channel_max_bytes,
        store: args.store,
        // Beside a controller, the serving process is the data plane.
        role: match args.store {
            crate::server::StoreChoice::File => crate::runtime::Role::Standalone,
            crate::server::StoreChoice::Kubernetes => crate::runtime::Role::DataPlane,
        },
        features,
        egress: crate::egress::EgressPolicy::new(args.egress_allow, args.egress_deny),
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                ca: args.tls_ca,
                ..crate::tls::TlsFiles::new(cert, key)
            }),
            _ => None,
        },
        tls_secret: args.tls_secret,
        oidc_issuers: args.oidc_issuers,
        listeners: crate::listener::ListenerLimits {
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
            request_timeout: args.request_timeout,
            max_connections: args.max_connections.map(|n| n as usize),
            max_headers: args.max_headers as usize,
            max_header_bytes: args.max_header_bytes as usize,
            http2_max_concurrent_streams: args.http2_max_concurrent_streams,
        },
        journal: crate::journal::JournalSettings {
            enabled: !args.no_journal,
            max_bytes: args.journal_max_bytes,
            retention: args.journal_retention,
            ..Default::default()
        },
        telemetry: crate::telemetry::TelemetryConfig::from_env()?,
        ..crate::server::ServeOptions::default()
    };
    let store = options.store;
    let server = crate::server::start(options).await?;
    say(&match store {
        crate::server::StoreChoice::File => format!(
            "rivulet serving events on {} (broker default/default: {}/default/default), resource API on {}",
            server.base_url, server.base_url, server.api_url
        ),
        crate::server::StoreChoice::Kubernetes => format!(
            "rivulet serving events on {}, health and metrics on {} (resources from the Kubernetes API server)",
            server.base_url, server.api_url
        ),
    });
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        // Stop first: writing the log line can fail or block (stderr closed or not read).
        token.cancel();
        tracing::info!("stopping: no new events taken, finishing deliveries in flight");
    });
    server.wait().await?;
    Ok(ExitCode::SUCCESS)
}

async fn controller(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let options = crate::server::ServeOptions {
        api_listen: args.listen,
        data_dir: args.data_dir,
        delivery: crate::delivery::DeliveryDefaults {
            timeout: args.delivery_timeout,
            backoff_cap: args.backoff_cap,
            ..Default::default()
        },
        shutdown_grace: args.shutdown_grace,
        advertised_url: Some(args.advertised_url),
        discovery: crate::discovery::DiscoverySettings {
            autocreate: false,
            ..Default::default()
        },
        store: crate::server::StoreChoice::Kubernetes,
        role: crate::runtime::Role::Controller,
        egress: crate::egress::EgressPolicy::new(args.egress_allow, args.egress_deny),
        ..Default::default()
    };
    let server = crate::server::start(options).await?;
    say(&format!(
        "rivulet controller reconciling the cluster's resources (health on {})",
        server.api_addr
    ));
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        token.cancel();
        tracing::info!("stopping the controller");
    });
    server.wait().await?;
    Ok(ExitCode::SUCCESS)
}

async fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create { role, name, server } => {
            let role = match role {
                TokenRole::Viewer => "viewer",
                TokenRole::Admin => "admin",
            };
            let name = name.unwrap_or_else(|| {
                format!("{role}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
            });
            let remote = server.remote();
            let response = remote
                .client
                .post(format!("{}/auth/tokens", remote.url))
                .json(&serde_json::json!({"name": name, "role": role}))
                .send()
                .await
                .map_err(|e| client::unreachable(&remote.url, e))?;
            if !response.status().is_success() {
                anyhow::bail!("{}", remote.failure(response).await);
            }
            let body: serde_json::Value = response.json().await?;
            eprintln!("token {name} ({role}) created; it is shown once:");
            println!("{}", body["token"].as_str().unwrap_or_default());
        }
        TokenCommand::List { server } => {
            let remote = server.remote();
            let body = client::get_json(&remote, &format!("{}/auth/tokens", remote.url)).await?;
            println!("{:<32} ROLE", "NAME");
            for item in body["items"].as_array().into_iter().flatten() {
                println!(
                    "{:<32} {}",
                    item["name"].as_str().unwrap_or_default(),
                    item["role"].as_str().unwrap_or_default()
                );
            }
        }
        TokenCommand::Revoke { name, server } => {
            let remote = server.remote();
            let response = remote
                .client
                .delete(format!("{}/auth/tokens/{name}", remote.url))
                .send()
                .await
                .map_err(|e| client::unreachable(&remote.url, e))?;
            if !response.status().is_success() {
                anyhow::bail!("{}", remote.failure(response).await);
            }
            println!("token {name} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Log lines to stderr. A failed write (stderr closed, its reader gone) is dropped without a
/// word: the subscriber would otherwise report it on stderr, which panics, and a server must
/// go on serving (and stop on SIGTERM) whether or not anyone reads its log.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(std::io::stderr().write(buf).unwrap_or(buf.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// A line for the operator on stderr; a closed or broken stderr is no reason to stop serving
/// (`eprintln!` would panic).
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn serve_args(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from([&["rivulet", "serve"], args].concat())?;
        match cli.command {
            Command::Serve(args) => Ok(*args),
            _ => unreachable!("serve was asked for"),
        }
    }

    #[test]
    fn tls_secret_is_namespace_slash_name_and_excludes_the_files() {
        let args = serve_args(&["--tls-secret", "knative-eventing/broker-tls"]).unwrap();
        assert_eq!(
            args.tls_secret.map(|s| s.to_string()).as_deref(),
            Some("Secret knative-eventing/broker-tls")
        );
        let error = serve_args(&["--tls-secret", "broker-tls"]).unwrap_err();
        assert!(error.to_string().contains("NAMESPACE/NAME"), "{error}");
        let error = serve_args(&[
            "--tls-secret",
            "ns/name",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
