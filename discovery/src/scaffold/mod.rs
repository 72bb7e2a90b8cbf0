//! `rivulet eventtypes scaffold`: a ready-to-run function project whose handler takes the
//! payload typed from an EventType's inferred schema.

use std::path::{Path, PathBuf};

use serde_json::Value;

use rivulet_core::resources::eventtype::attribute_of;

mod download;
pub mod model;
mod python;
mod rust;
mod typescript;

/// The languages a function can be scaffolded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Typescript,
    Python,
}

/// What the generators need to know about the EventType.
#[derive(Debug, Clone)]
pub struct Target {
    pub event_type: String,
    /// A package name made from the EventType's name.
    pub package_name: String,
    /// The schema version the types come from (0: no schema yet).
    pub schema_version: u64,
}

/// One file of a generated project, by path relative to the project folder.
#[derive(Debug, Clone)]
pub struct GeneratedFile {
    pub path: PathBuf,
    pub contents: String,
}

impl GeneratedFile {
    fn new(path: &str, contents: String) -> Self {
        Self {
            path: PathBuf::from(path),
            contents,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("the EventType has no attribute \"type\" with a value")]
    NoType,
    #[error("{path} already exists; choose another --output or pass --force")]
    Exists { path: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The files of a function project for a stored EventType object (its `status.schema`).
pub fn generate(eventtype: &Value, lang: Lang) -> Result<Vec<GeneratedFile>, ScaffoldError> {
    let event_type = attribute_of(eventtype, "type").ok_or(ScaffoldError::NoType)?;
    let name = eventtype
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("function");
    let schema = eventtype.pointer("/status/schema");
    let target = Target {
        event_type: event_type.to_string(),
        package_name: format!("{name}-function"),
        schema_version: eventtype
            .pointer("/status/schemaVersion")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    };
    let model = model::build(schema, &model::root_name(event_type));
    Ok(match lang {
        Lang::Rust => rust::generate(&target, &model),
        Lang::Typescript => typescript::generate(&target, &model),
        Lang::Python => python::generate(&target, &model),
    })
}

/// Writes the files under `dir`; refuses to overwrite unless `force`.
pub fn write(dir: &Path, files: &[GeneratedFile], force: bool) -> Result<(), ScaffoldError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ScaffoldError::Io { path, source }
    };
    if !force && let Some(existing) = files.iter().map(|f| dir.join(&f.path)).find(|p| p.exists()) {
        return Err(ScaffoldError::Exists {
            path: existing.display().to_string(),
        });
    }
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, &file.contents).map_err(io(&path))?;
    }
    Ok(())
}
