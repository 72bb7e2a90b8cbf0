//! A scriptable test subscriber: an HTTP server on `127.0.0.1:0` that records every request
//! (headers, body, and the CloudEvent parsed with `rivulet::event::from_http`) and answers
//! per a [`Script`]: a status per attempt, delays, `Retry-After`, reply events, or no answer.
//!
//! ```text
//! let sub = Subscriber::with_script(per_attempt(vec![Reply::status(503)], Reply::ok())).await;
//! // ... point a trigger at sub.url() or sub.url_at("a"), send events ...
//! let requests = sub.wait_for(2).await;
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use rivulet::event::{Event, HttpMode};
use tokio_util::sync::CancellationToken;

use super::{TestEvent, WAIT, wait_for};

/// One request a [`Subscriber`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Position among all requests this subscriber received, from 0.
    pub seq: usize,
    pub received_at: Instant,
    pub method: String,
    /// The request path (lets one subscriber serve several triggers at `/a`, `/b`, ...).
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The CloudEvent as `rivulet::event::from_http` reads it, or why it could not.
    pub event: Result<Event, String>,
    /// The content mode the event came in, when it was one.
    pub mode: Option<HttpMode>,
    /// 1 for the first request with this event id at this path, 2 for the next, ...
    pub attempt: u32,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The event; fails the test if the request carried none.
    pub fn event(&self) -> &Event {
        self.event
            .as_ref()
            .unwrap_or_else(|e| panic!("request {} carried no valid CloudEvent: {e}", self.seq))
    }

    /// A context attribute of the event in its canonical string form (decoded).
    pub fn attr(&self, name: &str) -> Option<String> {
        self.event
            .as_ref()
            .ok()
            .and_then(|e| e.attribute(name).map(|v| v.into_owned()))
    }

    /// The event id ("" when there is no valid event).
    pub fn id(&self) -> String {
        self.attr("id").unwrap_or_default()
    }
}

/// What a [`Subscriber`] answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Never answer (until the subscriber is dropped or [`Subscriber::release`] is called).
    pub hang: bool,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
            hang: false,
        }
    }

    /// 200 with no body.
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// No answer at all.
    pub fn hang() -> Reply {
        Reply {
            hang: true,
            ..Reply::status(200)
        }
    }

    /// Answers `status` with this event in binary mode (`ce-` headers and body).
    pub fn event(status: u16, event: &TestEvent) -> Reply {
        Reply {
            headers: event.header_pairs.clone(),
            body: event.body.clone(),
            ..Reply::status(status)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = body.into();
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// Decides the answer to each request.
pub type Script = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// Answers attempt `n` of each event (per path) with `replies[n - 1]`, then `then`.
pub fn per_attempt(replies: Vec<Reply>, then: Reply) -> Script {
    Arc::new(move |request: &Recorded| {
        replies
            .get(request.attempt as usize - 1)
            .cloned()
            .unwrap_or_else(|| then.clone())
    })
}

/// Answers every request the same way.
pub fn always(reply: Reply) -> Script {
    Arc::new(move |_: &Recorded| reply.clone())
}

/// Answers per request with a closure (by path, id, attempt, ...).
pub fn script(decide: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Script {
    Arc::new(decide)
}

struct SubscriberState {
    script: Script,
    log: Mutex<Vec<Recorded>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Cancelled to let hanging and delayed requests go (they then answer 503).
    release: CancellationToken,
}

/// Counts a request as in flight until its handler ends (also when the client goes away).
struct InFlight(Arc<SubscriberState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The recording, scriptable subscriber. Stops when dropped.
pub struct Subscriber {
    pub addr: SocketAddr,
    state: Arc<SubscriberState>,
    stop: CancellationToken,
}

impl Subscriber {
    /// A subscriber that answers 200 with no body.
    pub async fn start() -> Subscriber {
        Self::with_script(always(Reply::ok())).await
    }

    pub async fn with_script(script: Script) -> Subscriber {
        Self::serve(script, None).await
    }

    /// A subscriber on https only, serving the certificate and key in these PEM files;
    /// [`Subscriber::https_url`] is its address.
    pub async fn with_tls(
        script: Script,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Subscriber {
        let tls = rivulet::tls::CertReloader::load(rivulet::tls::TlsFiles::new(cert, key))
            .expect("the subscriber's certificate loads");
        Self::serve(script, Some(tls)).await
    }

    async fn serve(script: Script, tls: Option<Arc<rivulet::tls::CertReloader>>) -> Subscriber {
        let state = Arc::new(SubscriberState {
            script,
            log: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            release: CancellationToken::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the subscriber binds a port");
        let addr = listener.local_addr().expect("a bound address");
        let stop = CancellationToken::new();
        let app = axum::Router::new()
            .fallback(record_and_answer)
            .with_state(state.clone());
        let serve_stop = stop.clone();
        match tls {
            None => {
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(serve_stop.cancelled_owned())
                        .await;
                });
            }
            Some(tls) => {
                let mut strict = rivulet::features::Features::default();
                strict
                    .set("transport-encryption", "strict")
                    .expect("a known flag");
                tokio::spawn(rivulet::tls::serve(
                    listener,
                    app,
                    Some(tls),
                    rivulet::features::FeatureFlags::new(strict),
                    rivulet::listener::ListenerGuard::new(
                        "subscriber",
                        &rivulet::listener::ListenerLimits::default(),
                        1024,
                        &rivulet::metrics::Metrics::new(),
                    ),
                    serve_stop.cancelled_owned(),
                ));
            }
        }
        Subscriber { addr, state, stop }
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `https://localhost:PORT/`, for a subscriber started [`Subscriber::with_tls`].
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}/", self.addr.port())
    }

    /// `http://127.0.0.1:PORT/{path}` (`path` without leading slash).
    pub fn url_at(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.log.lock().unwrap().clone()
    }

    /// The requests received at `path` (with leading slash, e.g. `/a`).
    pub fn requests_at(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    pub fn count(&self) -> usize {
        self.state.log.lock().unwrap().len()
    }

    /// Waits until at least `n` requests have arrived; returns all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        self.wait_for_matching(n, |_| true).await
    }

    /// Waits until at least `n` requests satisfy `accept`; returns those.
    pub async fn wait_for_matching(
        &self,
        n: usize,
        accept: impl Fn(&Recorded) -> bool,
    ) -> Vec<Recorded> {
        let what = format!("{n} matching requests at the subscriber on {}", self.addr);
        wait_for(&what, WAIT, || {
            let matching: Vec<Recorded> =
                self.requests().into_iter().filter(|r| accept(r)).collect();
            std::future::ready((matching.len() >= n).then_some(matching))
        })
        .await
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever handled at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Lets every hanging or delayed request (and every later one) answer 503 at once.
    pub fn release(&self) {
        self.state.release.cancel();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.state.release.cancel();
        self.stop.cancel();
    }
}

async fn record_and_answer(
    State(state): State<Arc<SubscriberState>>,
    request: Request,
) -> Response {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _in_flight = InFlight(state.clone());

    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let (mode, event) = match rivulet::event::from_http(&parts.headers, body.clone()) {
        Ok((mode, mut events)) if events.len() == 1 => (Some(mode), Ok(events.remove(0))),
        Ok((mode, events)) => (
            Some(mode),
            Err(format!("expected one event, got {}", events.len())),
        ),
        Err(e) => (None, Err(e.to_string())),
    };
    let path = parts.uri.path().to_string();
    let recorded = {
        let mut log = state.log.lock().unwrap();
        let id = event.as_ref().ok().map(|e| e.id.clone());
        let earlier = log
            .iter()
            .filter(|r| r.path == path)
            .filter(|r| id.is_some() && r.event.as_ref().ok().map(|e| &e.id) == id.as_ref())
            .count();
        let recorded = Recorded {
            seq: log.len(),
            received_at: Instant::now(),
            method: parts.method.to_string(),
            path,
            headers: parts.headers,
            body,
            event,
            mode,
            attempt: earlier as u32 + 1,
        };
        log.push(recorded.clone());
        recorded
    };
    let reply = (state.script)(&recorded);
    if reply.hang {
        state.release.cancelled().await;
        return empty(StatusCode::SERVICE_UNAVAILABLE);
    }
    if !reply.delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(reply.delay) => {}
            _ = state.release.cancelled() => return empty(StatusCode::SERVICE_UNAVAILABLE),
        }
    }
    let mut response = Response::builder()
        .status(StatusCode::from_u16(reply.status).expect("a valid status code"));
    for (name, value) in &reply.headers {
        response = response.header(name.as_str(), value.as_str());
    }
    response
        .body(Body::from(reply.body))
        .expect("a valid response")
}

fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}
