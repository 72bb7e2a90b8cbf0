//! Rivulet's web console: a page and its script and style, embedded in the binary and served
//! at `/ui/` on the API listener.
//!
//! The files hold no data and are served without a token, as a login page is; everything
//! they show comes from API calls that carry the token the user logs in with, so a viewer
//! token sees and only an admin token may change. A strict Content-Security-Policy keeps the
//! page from loading anything from elsewhere or running script it did not ship with.
#![forbid(unsafe_code)]

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest as _, Sha256};

use rivulet_control::runtime::routes::PublicRoutes;

/// Where the console is served.
pub const PATH: &str = "/ui/";

/// Only this origin's files, no inline script or style, no framing, no form posts elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../assets/index.html"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/console.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../assets/favicon.svg"),
    },
];

/// Each file's entity tag, so that a reload revalidates instead of downloading again.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.bytes);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

inventory::submit! {
    PublicRoutes { build: routes }
}

fn routes() -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent(PATH) }))
        .route(PATH, get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move {
                serve(&file, &headers)
            }),
        )
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|asset| asset.name == name) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("the console has no file {name:?}; it starts at {PATH}\n"),
        )
            .into_response();
    };
    let asset = &ASSETS[index];
    if let Some(bytes) = development_copy(asset.name) {
        return with_headers(asset.content_type, None, bytes.into_response());
    }
    let etag = ETAGS[index].as_str();
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag));
    let response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.bytes.into_response()
    };
    with_headers(asset.content_type, Some(etag), response)
}

fn with_headers(
    content_type: &'static str,
    etag: Option<&str>,
    mut response: Response,
) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Revalidated on each load, so an upgraded server never runs an old script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(etag) = etag.and_then(|tag| HeaderValue::from_str(tag).ok()) {
        headers.insert(header::ETAG, etag);
    }
    response
}

/// In debug builds, `RIVULET_CONSOLE_ASSETS` names a folder to read the console's files from
/// on each request, so that working on the console needs no rebuild. Release builds always
/// serve what they embed.
fn development_copy(name: &str) -> Option<Vec<u8>> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let folder = std::env::var_os("RIVULET_CONSOLE_ASSETS")?;
    std::fs::read(std::path::Path::new(&folder).join(name)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    async fn get(path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = http::Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        routes()
            .oneshot(request.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_page_is_served_with_a_policy_that_allows_only_its_own_files() {
        let response = get("/ui/", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            csp.contains("default-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(html.contains("console.js"), "the page loads its script");
        for outside in ["http://", "https://", "//cdn"] {
            assert!(
                !html.contains(&format!("src=\"{outside}")),
                "the page loads nothing from elsewhere"
            );
        }
    }

    #[tokio::test]
    async fn a_known_tag_gets_not_modified_and_unknown_files_a_clear_404() {
        let first = get("/ui/console.js", &[]).await;
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_string();
        let again = get("/ui/console.js", &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let missing = get("/ui/..%2Fadmin.token", &[]).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let redirect = get("/ui", &[]).await;
        assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(redirect.headers()[header::LOCATION], PATH);
    }
}
