//! `GET /scaffold/{namespace}/{eventtype}?lang=rust|typescript|python`: the function project
//! `rivulet eventtypes scaffold` would write, as a `.tar.gz` download (for the web console).
//! Viewers may download it: it is made from what they can read already.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{GeneratedFile, Lang, generate};
use rivulet_control::api::status_error;
use rivulet_control::runtime::Context;
use rivulet_control::runtime::routes::{HttpRoutes, Listener};
use rivulet_core::resources::find_kind_by_name;
use rivulet_store::ResourceStore;

inventory::submit! {
    HttpRoutes { listener: Listener::Api, build: routes }
}

fn routes(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/scaffold/{namespace}/{name}", get(download))
        .with_state(ctx.store.clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadParams {
    lang: String,
}

async fn download(
    State(store): State<Arc<dyn ResourceStore>>,
    Path((namespace, name)): Path<(String, String)>,
    params: Result<Query<DownloadParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let lang = match params.as_ref().map(|Query(p)| p.lang.as_str()) {
        Ok("rust") => Lang::Rust,
        Ok("typescript") => Lang::Typescript,
        Ok("python") => Lang::Python,
        _ => {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "give the language as ?lang=rust, ?lang=typescript or ?lang=python",
            );
        }
    };
    let kind = find_kind_by_name(None, "EventType").expect("EventType is a served kind");
    let eventtype = match store.get(kind, &namespace, &name).await {
        Ok(Some(eventtype)) => eventtype,
        Ok(None) => {
            return status_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("EventType {namespace}/{name} not found"),
            );
        }
        Err(e) => {
            return status_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("cannot read EventType {namespace}/{name}: {e}"),
            );
        }
    };
    let files = match generate(&eventtype, lang) {
        Ok(files) => files,
        Err(e) => {
            return status_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("EventType {namespace}/{name}: {e}"),
            );
        }
    };
    let folder = format!("{name}-function-{}", lang_name(lang));
    let archive = match tar_gz(&folder, &files) {
        Ok(archive) => archive,
        Err(e) => {
            return status_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("cannot pack the project: {e}"),
            );
        }
    };
    let disposition = format!("attachment; filename=\"{folder}.tar.gz\"");
    let mut response = archive.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    // The name is an object name (a DNS subdomain) and a fixed suffix: always a valid header.
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "rust",
        Lang::Typescript => "typescript",
        Lang::Python => "python",
    }
}

/// The files under `folder/` in a gzipped tar, readable by the user, with the time of now.
fn tar_gz(folder: &str, files: &[GeneratedFile]) -> std::io::Result<Vec<u8>> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut archive = tar::Builder::new(encoder);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for file in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(file.contents.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(now);
        header.set_entry_type(tar::EntryType::Regular);
        let path = std::path::Path::new(folder).join(&file.path);
        archive.append_data(&mut header, path, file.contents.as_bytes())?;
    }
    archive.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn the_archive_holds_every_file_under_one_folder() {
        let files = vec![
            GeneratedFile::new("Cargo.toml", "[package]\n".into()),
            GeneratedFile::new("src/main.rs", "fn main() {}\n".into()),
        ];
        let bytes = tar_gz("orders-function-rust", &files).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            seen.push((path, text));
        }
        assert_eq!(
            seen,
            [
                (
                    "orders-function-rust/Cargo.toml".to_string(),
                    "[package]\n".to_string()
                ),
                (
                    "orders-function-rust/src/main.rs".to_string(),
                    "fn main() {}\n".to_string()
                ),
            ]
        );
    }
}
