//! What every HTTP listener bounds, so that slow or idle clients cannot hold the server for
//! everyone: the time to send request headers, how long a connection may sit idle, how long a
//! whole request may take, how many connections are open at once, and how many and how large
//! request headers may be (HTTP/1 and HTTP/2). Also raises the open-files limit at start.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use rivulet_core::log_throttle::LogThrottle;
use rivulet_core::metrics::{ConnectionCloseLabels, ListenerLabels, Metrics};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Limits applied to each listener (`--listen` and `--api-listen` alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerLimits {
    /// A new connection must send its first request's headers (and finish a TLS handshake)
    /// within this; each request's headers must arrive within it once HTTP/1 starts reading
    /// them.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// From a request's headers to its response's headers: reading the body and handling it.
    pub request_timeout: Duration,
    /// Open connections per listener; `None`: derived from the open-files limit.
    pub max_connections: Option<usize>,
    /// Request header fields per request (HTTP/1).
    pub max_headers: usize,
    /// Bytes of the request line and headers (HTTP/1), of the header list (HTTP/2).
    pub max_header_bytes: usize,
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_concurrent_streams: u32,
}

/// hyper's smallest read buffer, and so the smallest header size limit it can enforce.
pub const MIN_HEADER_BYTES: usize = 8192;

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            max_connections: None,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            http2_max_concurrent_streams: 100,
        }
    }
}

/// File descriptors kept aside from the connection limit: stores, logs, outbound deliveries.
const RESERVED_FILES: u64 = 1024;

/// The connection limit derived from the open-files limit is never above this.
const MAX_DERIVED_CONNECTIONS: u64 = 10_000;

/// The connection limit derived from the open-files limit is never below this.
const MIN_DERIVED_CONNECTIONS: u64 = 64;

/// Raises the open-files soft limit to the hard limit, once per process, and logs it;
/// the soft limit now in force (`None` when it cannot be read).
pub fn raise_open_files_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(
                open_files_limit = limit,
                "open-files limit raised to the hard limit"
            );
            Some(limit)
        }
        Err(error) => {
            let current = rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft);
            tracing::warn!(%error, open_files_limit = ?current, "cannot raise the open-files limit");
            current
        }
    })
}

/// The connection limit of each of `listeners` listeners: the configured one, or what the
/// open-files limit leaves room for.
pub fn connection_limit(
    limits: &ListenerLimits,
    open_files: Option<u64>,
    listeners: usize,
) -> usize {
    let listeners = listeners.max(1) as u64;
    let room = open_files.map(|files| files.saturating_sub(RESERVED_FILES) / listeners);
    match limits.max_connections {
        Some(configured) => {
            if let Some(room) = room.filter(|room| (configured as u64) > *room) {
                tracing::warn!(
                    max_connections = configured,
                    open_files_limit = ?open_files,
                    room,
                    "--max-connections is above what the open-files limit leaves room for: \
                     accepting may fail with too many open files before the limit is reached"
                );
            }
            configured.max(1)
        }
        None => {
            let derived = room
                .unwrap_or(MAX_DERIVED_CONNECTIONS)
                .clamp(MIN_DERIVED_CONNECTIONS, MAX_DERIVED_CONNECTIONS);
            derived as usize
        }
    }
}

/// One listener's limits, connection slots and metrics.
#[derive(Clone)]
pub struct ListenerGuard {
    name: &'static str,
    limits: ListenerLimits,
    max_connections: usize,
    slots: Arc<Semaphore>,
    open: Gauge,
    refused: Counter,
    closed_idle: Counter,
    closed_header_timeout: Counter,
    closed_headers_too_large: Counter,
    request_timeouts: Counter,
    /// Refused connections are logged once per interval, not one line each.
    refusal_log: Arc<LogThrottle>,
}

impl ListenerGuard {
    /// `name` labels the metrics (`ingress`, `api`).
    pub fn new(
        name: &'static str,
        limits: &ListenerLimits,
        max_connections: usize,
        metrics: &Metrics,
    ) -> Self {
        let listener = ListenerLabels { listener: name };
        let closed = |reason| {
            metrics
                .connections_closed
                .get_or_create(&ConnectionCloseLabels {
                    listener: name,
                    reason,
                })
                .clone()
        };
        metrics
            .connections_limit
            .get_or_create(&listener)
            .set(max_connections as i64);
        Self {
            name,
            limits: limits.clone(),
            max_connections,
            slots: Arc::new(Semaphore::new(max_connections)),
            open: metrics.connections_open.get_or_create(&listener).clone(),
            refused: metrics.connections_refused.get_or_create(&listener).clone(),
            closed_idle: closed("idle"),
            closed_header_timeout: closed("header_timeout"),
            closed_headers_too_large: closed("headers_too_large"),
            request_timeouts: metrics.request_timeouts.get_or_create(&listener).clone(),
            refusal_log: Arc::default(),
        }
    }

    pub fn limits(&self) -> &ListenerLimits {
        &self.limits
    }

    /// A slot for a newly accepted connection, or `None` when the listener is full: the
    /// connection is then closed at once (counted, and logged now and then).
    pub fn admit(&self, peer: std::net::SocketAddr) -> Option<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.open.inc();
                Some(Slot {
                    _permit: permit,
                    open: self.open.clone(),
                })
            }
            Err(_) => {
                self.refused.inc();
                if let Some(suppressed) = self.refusal_log.allow() {
                    tracing::warn!(
                        listener = self.name,
                        %peer,
                        max_connections = self.max_connections,
                        refused = suppressed + 1,
                        "connection limit reached: new connections are closed until some end \
                         (--max-connections)"
                    );
                }
                None
            }
        }
    }

    /// The HTTP/1 and HTTP/2 settings every connection of this listener gets.
    pub fn http_builder(&self) -> auto::Builder<TokioExecutor> {
        let limits = &self.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers)
            // hyper answers 431 when the request line and headers fill the read buffer.
            .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        builder
    }

    /// `app` as a hyper service whose requests are timed (`--request-timeout`) and counted as
    /// activity on the connection, and carry the peer's address (axum's `ConnectInfo`).
    pub fn service(
        &self,
        app: axum::Router,
        activity: Arc<Activity>,
        peer: std::net::SocketAddr,
    ) -> TimedService {
        TimedService {
            app,
            activity,
            peer,
            timeout: self.limits.request_timeout,
            timeouts: self.request_timeouts.clone(),
            listener: self.name,
        }
    }

    /// Drives `conn` to its end: closes it gracefully when it has had no request in flight
    /// for the idle timeout (the header read timeout before its first request) or when
    /// `closing` is cancelled, and drops it if a graceful close does not finish in time.
    pub async fn drive<C>(
        &self,
        conn: C,
        activity: &Activity,
        closing: &CancellationToken,
    ) -> Result<(), BoxError>
    where
        C: GracefulConnection<Error = BoxError>,
    {
        tokio::pin!(conn);
        let mut draining = false;
        let mut closed_for_idleness = false;
        loop {
            let wake = activity.next_check(&self.limits);
            tokio::select! {
                result = conn.as_mut() => {
                    self.count_close(result.as_ref().err(), closed_for_idleness);
                    return result;
                }
                () = closing.cancelled(), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                () = tokio::time::sleep_until(wake.into()) => {
                    if !activity.idle_past(&self.limits, Instant::now()) {
                        continue;
                    }
                    if draining {
                        // Still idle a full period after the graceful close began: a client
                        // dribbling headers does not get to keep the connection.
                        self.closed_idle.inc();
                        return Ok(());
                    }
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                    closed_for_idleness = true;
                    activity.restart_idle();
                }
            }
        }
    }

    /// Counts a connection the server ended: by hyper's error when it says why, else as idle
    /// when the idle timeout started the close.
    fn count_close(&self, error: Option<&BoxError>, closed_for_idleness: bool) {
        let hyper_error = error.and_then(|error| error.downcast_ref::<hyper::Error>());
        if let Some(error) = hyper_error {
            if error.is_timeout() {
                self.closed_header_timeout.inc();
                return;
            }
            if error.is_parse_too_large() {
                self.closed_headers_too_large.inc();
                return;
            }
        }
        if closed_for_idleness {
            self.closed_idle.inc();
        }
    }
}

/// A connection's place under the connection limit, given back when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Whether a connection has requests in flight, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Since when nothing is in flight, and whether a request was ever served.
    idle: Mutex<(Instant, bool)>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle: Mutex::new((Instant::now(), false)),
        }
    }
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.idle.lock().expect("lock poisoned").1 = true;
        InFlight(self.clone())
    }

    /// How long the connection may stay idle: before its first request only as long as
    /// sending that request's headers may take.
    fn allowance(&self, limits: &ListenerLimits) -> (Instant, Duration) {
        let (since, served) = *self.idle.lock().expect("lock poisoned");
        let allowed = if served {
            limits.idle_timeout
        } else {
            limits.header_read_timeout.min(limits.idle_timeout)
        };
        (since, allowed)
    }

    fn idle_past(&self, limits: &ListenerLimits, now: Instant) -> bool {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let (since, allowed) = self.allowance(limits);
        now.saturating_duration_since(since) >= allowed
    }

    /// When to look again whether the connection is idle.
    fn next_check(&self, limits: &ListenerLimits) -> Instant {
        let now = Instant::now();
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return now + limits.idle_timeout;
        }
        let (since, allowed) = self.allowance(limits);
        (since + allowed).max(now)
    }

    fn restart_idle(&self) {
        self.idle.lock().expect("lock poisoned").0 = Instant::now();
    }
}

/// One request in flight; its end makes the connection idle again if it was the last.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut idle = self.0.idle.lock().expect("lock poisoned");
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            idle.0 = Instant::now();
        }
    }
}

/// The router as a hyper service, with the whole-request timeout.
#[derive(Clone)]
pub struct TimedService {
    app: axum::Router,
    activity: Arc<Activity>,
    peer: std::net::SocketAddr,
    timeout: Duration,
    timeouts: Counter,
    listener: &'static str,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<hyper::body::Incoming>> for TimedService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, mut request: Request<hyper::body::Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let version = request.version();
        let handling = tower::ServiceExt::oneshot(self.app.clone(), request);
        let (timeout, timeouts, listener) = (self.timeout, self.timeouts.clone(), self.listener);
        Box::pin(async move {
            let answer = match tokio::time::timeout(timeout, handling).await {
                Ok(answer) => answer,
                Err(_) => {
                    timeouts.inc();
                    tracing::info!(listener, %method, %path, ?timeout,
                        "request not received and answered within the request timeout: 408");
                    Ok(request_timeout_response(timeout, version))
                }
            };
            drop(in_flight);
            answer
        })
    }
}

/// The answer to a request that took longer than `--request-timeout`.
fn request_timeout_response(timeout: Duration, version: http::Version) -> Response<Body> {
    let mut response = Response::builder()
        .status(StatusCode::REQUEST_TIMEOUT)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
    // The rest of the body may still be on its way: do not read it as the next request.
    if version < http::Version::HTTP_2 {
        response = response.header(http::header::CONNECTION, "close");
    }
    response
        .body(Body::from(format!(
            "request timeout: the request was not received and answered within {} \
             (--request-timeout); send it again\n",
            humantime::format_duration(timeout)
        )))
        .expect("a static response builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ListenerLimits {
        ListenerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ListenerLimits::default()
        }
    }

    #[test]
    fn derived_connection_limit_leaves_room_for_other_files() {
        let limits = limits();
        assert_eq!(connection_limit(&limits, Some(20_000), 2), 9_488);
        assert_eq!(connection_limit(&limits, Some(1_048_576), 2), 10_000);
        assert_eq!(connection_limit(&limits, Some(1_024), 2), 64);
        assert_eq!(connection_limit(&limits, None, 2), 10_000);
    }

    #[test]
    fn a_configured_connection_limit_is_kept() {
        let limits = ListenerLimits {
            max_connections: Some(50_000),
            ..limits()
        };
        assert_eq!(connection_limit(&limits, Some(1_024), 2), 50_000);
    }

    #[test]
    fn a_new_connection_gets_the_header_timeout_then_the_idle_timeout() {
        let limits = limits();
        let activity = Arc::new(Activity::default());
        let start = activity.idle.lock().unwrap().0;
        assert!(!activity.idle_past(&limits, start + Duration::from_secs(9)));
        assert!(activity.idle_past(&limits, start + Duration::from_secs(10)));

        let request = activity.begin();
        assert!(
            !activity.idle_past(&limits, start + Duration::from_secs(600)),
            "a request in flight is not idleness"
        );
        drop(request);
        let since = activity.idle.lock().unwrap().0;
        assert!(!activity.idle_past(&limits, since + Duration::from_secs(59)));
        assert!(activity.idle_past(&limits, since + Duration::from_secs(60)));
    }

    #[test]
    fn idleness_starts_when_the_last_request_ends() {
        let limits = limits();
        let activity = Arc::new(Activity::default());
        let first = activity.begin();
        let second = activity.begin();
        drop(first);
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(!activity.idle_past(&limits, later));
        drop(second);
        assert!(activity.idle_past(&limits, later));
    }
}
