//! Bounds on what clients and subscribers can make the server hold: subscriber response
//! bodies, slow and idle connections, the connection limit, header count and size, and the
//! whole-request timeout. Real servers over real sockets.

use rivulet_testkit as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NS: &str = "default";
const BROKER: &str = "default";
const CLOSED: &str = "rivulet_connections_closed_total";
const OPEN: &str = "rivulet_connections_open";

/// Reads until the peer closes the connection (or resets it); the bytes read.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return answer,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Whether the server closed `stream` within [`WAIT`], having sent nothing or an answer.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    tokio::time::timeout(WAIT, read_to_close(stream))
        .await
        .is_ok()
}

fn ingress_addr(server: &TestServer) -> String {
    server
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// One binary-mode event as raw HTTP/1.1, on a connection kept alive.
fn raw_event(id: &str) -> Vec<u8> {
    let body = r#"{"n":1}"#;
    format!(
        "POST /{NS}/{BROKER} HTTP/1.1\r\nhost: rivulet\r\nce-specversion: 1.0\r\nce-id: {id}\r\n\
         ce-source: /limits\r\nce-type: com.example.limits\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one response head from a kept-alive connection; its status code.
async fn read_status(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .expect("the connection stays open");
        assert_eq!(n, 1, "connection closed before the answer: {head:?}");
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let length: usize = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("the body");
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

/// A subscriber that answers 200 with a reply of `total` bytes, streamed in chunks made
/// on demand (nothing that size is ever allocated); counts what it managed to hand over
/// and notes when the stream was dropped (the reader went away).
struct HugeAnswer {
    url: String,
    produced: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
}

static CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];

async fn huge_answer(total: u64) -> HugeAnswer {
    struct Produced {
        count: Arc<AtomicU64>,
        dropped: Arc<AtomicBool>,
    }
    impl Drop for Produced {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }
    let produced = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let app = {
        let (produced, dropped) = (produced.clone(), dropped.clone());
        axum::Router::new().fallback(move || {
            let state = Produced {
                count: produced.clone(),
                dropped: dropped.clone(),
            };
            async move {
                let chunks = futures::stream::unfold(state, move |state| async move {
                    let sent = state.count.load(Ordering::SeqCst);
                    if sent >= total {
                        return None;
                    }
                    state.count.fetch_add(CHUNK.len() as u64, Ordering::SeqCst);
                    Some((Ok::<_, std::io::Error>(Bytes::from_static(&CHUNK)), state))
                });
                axum::http::Response::builder()
                    .status(200)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", "reply-1")
                    .header("ce-source", "/huge")
                    .header("ce-type", "com.example.huge")
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from_stream(chunks))
                    .unwrap()
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    HugeAnswer {
        url,
        produced,
        dropped,
    }
}

/// A subscriber answering 300 MB: the attempt fails once the configured cap is passed, the
/// rest is never read (the connection is dropped), and the dead-letter event, the log and a
/// metric label say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_subscriber_response_fails_the_attempt_without_being_read() {
    const CAP: usize = 1024 * 1024;
    const HUGE: u64 = 300 * 1000 * 1000;
    let server = TestServer::start_ready_with(|options| {
        options.delivery.max_response_body = CAP;
    })
    .await;
    let huge = huge_answer(HUGE).await;
    let dls = Subscriber::start().await;
    let mut manifest = trigger(NS, "huge", BROKER, &huge.url);
    manifest["spec"]["delivery"] =
        json!({"retry": 0, "deadLetterSink": {"uri": dls.url_at("dls")}});
    server.create_trigger(&manifest).await;

    server
        .send(NS, BROKER, &TestEvent::new("big-1", "com.example.ask"))
        .await;
    let dead = dls.wait_for(1).await.remove(0);
    server.wait_deliveries_final(NS, "huge", 1).await;

    assert_eq!(dead.id(), "big-1");
    assert_eq!(dead.attr("knativeerrordest"), Some(huge.url.clone()));
    assert_eq!(dead.attr("knativeerrorcode").as_deref(), Some("502"));
    let reason = base64::engine::general_purpose::STANDARD
        .decode(dead.attr("knativeerrordata").expect("knativeerrordata"))
        .expect("base64");
    let reason = String::from_utf8_lossy(&reason);
    assert!(
        reason.contains(&format!("larger than the response limit of {CAP} bytes")),
        "{reason}"
    );
    assert_eq!(
        server
            .metric(
                "rivulet_trigger_delivery_failures_total",
                &[("trigger", "huge"), ("reason", "response_too_large")]
            )
            .await,
        1.0
    );
    // The subscriber's stream ends when Rivulet drops the connection, long before 300 MB:
    // what it handed over is the cap plus what socket buffers held.
    wait_for("the subscriber's stream to be dropped", WAIT, || async {
        huge.dropped.load(Ordering::SeqCst).then_some(())
    })
    .await;
    let produced = huge.produced.load(Ordering::SeqCst);
    assert!(
        produced < 64 * 1024 * 1024,
        "{produced} bytes were produced for a {CAP}-byte cap"
    );
}

/// 1,500 sockets that send nothing and 300 that dribble header bytes hold no one up: a
/// well-behaved sender on new connections keeps getting 202 while they are open, and the
/// server closes every one of them after the header read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_flood_does_not_stop_well_behaved_senders() {
    const IDLE: usize = 1500;
    const SLOW: usize = 300;
    let server = TestServer::start_ready_with(|options| {
        options.listeners.header_read_timeout = Duration::from_secs(15);
        options.listeners.idle_timeout = Duration::from_secs(15);
        options.listeners.max_connections = Some(4000);
    })
    .await;
    let addr = ingress_addr(&server);

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let stop_dribbling = tokio_util::sync::CancellationToken::new();
    let mut slow = Vec::with_capacity(SLOW);
    for n in 0..SLOW {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        let stop = stop_dribbling.clone();
        slow.push(tokio::spawn(async move {
            let mut line = format!("POST /{NS}/{BROKER} HTTP/1.1\r\n").into_bytes();
            // One header line a second, for ever: the request never completes.
            for header in 0.. {
                if stream.write_all(&line).await.is_err() {
                    break;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                line = format!("x-slow-{n}-{header}: a\r\n").into_bytes();
            }
            // The server closes it; what it sends before (if anything) is not a 2xx.
            let answer = read_to_close(&mut stream).await;
            !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 2")
        }));
    }
    let flood = (IDLE + SLOW) as f64;
    wait_for("the flood to be accepted", WAIT, || async {
        let open = server.metric(OPEN, &[("listener", "ingress")]).await;
        (open >= flood).then_some(())
    })
    .await;

    // Each event on a connection of its own: accepting and serving new senders goes on.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for n in 0..50 {
        let event = TestEvent::new(&format!("good-{n}"), "com.example.good");
        let response = fresh
            .post(server.ingress_url(NS, BROKER))
            .headers(event.headers())
            .body(event.body.clone())
            .send()
            .await
            .expect("ingress answers during the flood");
        assert_eq!(response.status(), 202, "event {n} during the flood");
    }
    let open = server.metric(OPEN, &[("listener", "ingress")]).await;
    assert!(
        open >= flood,
        "the flood was still open while the sender was served ({open} connections)"
    );

    for (n, stream) in idle.iter_mut().enumerate() {
        assert!(
            closed_by_server(stream).await,
            "idle socket {n} still open after the header read timeout"
        );
    }
    for (n, task) in slow.into_iter().enumerate() {
        let refused = tokio::time::timeout(WAIT, task)
            .await
            .unwrap_or_else(|_| panic!("slow sender {n} still connected"))
            .unwrap();
        assert!(refused, "slow sender {n} got a 2xx");
    }
    stop_dribbling.cancel();
    let closed = server.metric(CLOSED, &[("listener", "ingress")]).await;
    assert!(closed >= flood, "{closed} connections counted as closed");
    wait_for("the flood's connections to be gone", WAIT, || async {
        let open = server.metric(OPEN, &[("listener", "ingress")]).await;
        (open < 10.0).then_some(())
    })
    .await;
}

/// At the connection limit new connections are closed on arrival and counted, while a
/// sender on an open connection keeps being served; once connections end, new ones are
/// taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_limit_new_connections_are_refused_and_existing_ones_served() {
    const LIMIT: usize = 20;
    let server = TestServer::start_ready_with(|options| {
        options.listeners.max_connections = Some(LIMIT);
        options.listeners.header_read_timeout = Duration::from_secs(60);
        options.listeners.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = ingress_addr(&server);
    assert_eq!(
        server
            .metric("rivulet_connections_limit", &[("listener", "ingress")])
            .await,
        LIMIT as f64
    );

    let mut sender = TcpStream::connect(&addr).await.unwrap();
    sender.write_all(&raw_event("kept-1")).await.unwrap();
    assert_eq!(read_status(&mut sender).await, 202);

    let mut idle = Vec::new();
    for _ in 1..LIMIT {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    server
        .wait_metric(OPEN, &[("listener", "ingress")], LIMIT as f64)
        .await;
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    let _ = extra.write_all(&raw_event("refused-1")).await;
    let answer = tokio::time::timeout(WAIT, read_to_close(&mut extra))
        .await
        .expect("the connection over the limit is closed");
    assert!(
        answer.is_empty(),
        "no answer over the limit: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        server
            .metric(
                "rivulet_connections_refused_total",
                &[("listener", "ingress")]
            )
            .await
            >= 1.0
    );

    sender.write_all(&raw_event("kept-2")).await.unwrap();
    assert_eq!(
        read_status(&mut sender).await,
        202,
        "the open connection is still served"
    );

    drop(idle);
    let client = reqwest::Client::new();
    wait_for("a new connection to be taken again", WAIT, || async {
        let event = TestEvent::new("after-1", "com.example.limits");
        let sent = client
            .post(server.ingress_url(NS, BROKER))
            .headers(event.headers())
            .body(event.body.clone())
            .send()
            .await;
        sent.ok().filter(|r| r.status() == 202).map(|_| ())
    })
    .await;
}

/// Too many header fields, or too many header bytes, get 431 on both listeners; a request
/// within the limits goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_get_431() {
    let server = TestServer::start_ready_with(|options| {
        options.listeners.max_headers = 50;
        options.listeners.max_header_bytes = 16 * 1024;
    })
    .await;
    let event = TestEvent::new("h-1", "com.example.headers");
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };

    let mut many = event.headers();
    for n in 0..60 {
        many.insert(
            axum::http::HeaderName::from_bytes(format!("x-extra-{n}").as_bytes()).unwrap(),
            axum::http::HeaderValue::from_static("1"),
        );
    }
    let mut large = event.headers();
    large.insert(
        "x-large",
        axum::http::HeaderValue::from_str(&"a".repeat(20 * 1024)).unwrap(),
    );
    for (what, headers) in [("60 extra headers", &many), ("a 20 KiB header", &large)] {
        for url in [
            server.ingress_url(NS, BROKER),
            format!(
                "{}/apis/eventing.knative.dev/v1/namespaces/{NS}/brokers",
                server.api
            ),
        ] {
            let response = fresh()
                .post(&url)
                .headers(headers.clone())
                .body(event.body.clone())
                .send()
                .await
                .expect("an answer");
            assert_eq!(response.status(), 431, "{what} to {url}");
        }
    }
    assert!(
        server
            .metric(CLOSED, &[("reason", "headers_too_large")])
            .await
            >= 4.0
    );
    // HTTP/2 bounds the header list the same way.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .post(server.ingress_url(NS, BROKER))
        .headers(large.clone())
        .body(event.body.clone())
        .send()
        .await
        .expect("an HTTP/2 answer");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 431, "a 20 KiB header over HTTP/2");

    let mut within = event.headers();
    for n in 0..20 {
        within.insert(
            axum::http::HeaderName::from_bytes(format!("x-extra-{n}").as_bytes()).unwrap(),
            axum::http::HeaderValue::from_static("1"),
        );
    }
    let (status, body) = server
        .post_raw(NS, BROKER, within, event.body.clone())
        .await;
    assert_eq!(status, 202, "{body}");
}

/// A request whose body does not arrive within the request timeout gets 408 with a message
/// naming the flag, and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_the_request_timeout_gets_408() {
    let server = TestServer::start_ready_with(|options| {
        options.listeners.request_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(ingress_addr(&server)).await.unwrap();
    // Headers promise 100 bytes of body; only one comes.
    let head = format!(
        "POST /{NS}/{BROKER} HTTP/1.1\r\nhost: rivulet\r\nce-specversion: 1.0\r\nce-id: slow-1\r\n\
         ce-source: /limits\r\nce-type: com.example.slow\r\ncontent-type: application/json\r\n\
         content-length: 100\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(WAIT, read_to_close(&mut stream))
        .await
        .expect("an answer and a close");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--request-timeout"), "{answer}");
    assert_eq!(
        server
            .metric(
                "rivulet_http_request_timeouts_total",
                &[("listener", "ingress")]
            )
            .await,
        1.0
    );
}

/// A kept-alive connection is closed once it has waited for its next request longer than
/// the timeouts allow, and the close is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed() {
    let server = TestServer::start_ready_with(|options| {
        options.listeners.header_read_timeout = Duration::from_secs(1);
        options.listeners.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(ingress_addr(&server)).await.unwrap();
    stream.write_all(&raw_event("idle-1")).await.unwrap();
    assert_eq!(read_status(&mut stream).await, 202);
    assert!(
        closed_by_server(&mut stream).await,
        "the idle connection is closed"
    );
    wait_for("the close to be counted", WAIT, || async {
        let closed = server.metric(CLOSED, &[("listener", "ingress")]).await;
        (closed >= 1.0).then_some(())
    })
    .await;
}

/// `rivulet display` listens under the same default limits as `rivulet serve`: a request
/// whose headers exceed `--max-header-bytes` (64 KiB; hyper alone would take about 400 KiB)
/// gets 431, an event within them is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_display_command_has_the_listener_limits() {
    let port = free_port();
    let mut display = std::process::Command::new(binary())
        .args(["display", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rivulet display starts");
    let url = format!("http://127.0.0.1:{port}/");
    let event = TestEvent::new("display-1", "com.example.display");
    wait_for("rivulet display to listen", Duration::from_secs(30), || {
        let url = url.clone();
        async move { http().get(&url).send().await.ok().map(|_| ()) }
    })
    .await;

    let mut large = event.headers();
    large.insert(
        "x-large",
        axum::http::HeaderValue::from_str(&"a".repeat(100 * 1024)).unwrap(),
    );
    let refused = http()
        .post(&url)
        .headers(large)
        .body(event.body.clone())
        .send()
        .await
        .expect("an answer");
    assert_eq!(refused.status(), 431, "a 100 KiB header");

    let accepted = http()
        .post(&url)
        .headers(event.headers())
        .body(event.body.clone())
        .send()
        .await
        .expect("an answer");
    assert!(accepted.status().is_success(), "{}", accepted.status());
    let _ = display.kill();
    let output = display.wait_with_output().expect("output is read");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("display-1"), "{printed}");
}
