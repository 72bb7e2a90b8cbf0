//! Conformance: the CESQL TCK, the CloudEvents JSON vectors, the official SDKs, Knative's samples and property tests.

mod cesql_tck;
mod cloudevents_json_conformance;
mod knative_samples;
mod properties;
mod sdks;

use std::path::PathBuf;

/// The documents of one shared conformance suite, by file name, sorted: the files ending in
/// `.{extension}` of folder `suite` of `RIVULET_CONFORMANCE_DIR`, or of ../shared/conformance
/// beside the workspace, read with `parse`. `None`, said on stderr, when the suite is not
/// there: the tests then skip.
fn conformance_suite<T, E: std::fmt::Display>(
    suite: &str,
    extension: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Option<Vec<(String, T)>> {
    let root = match std::env::var_os("RIVULET_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"),
    };
    let dir = root.join(suite);
    if !dir.is_dir() {
        eprintln!(
            "skipping: no {} (set RIVULET_CONFORMANCE_DIR or provide ../shared/conformance \
             beside the workspace)",
            dir.display()
        );
        return None;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{} is not readable: {e}", dir.display()))
        .map(|entry| entry.expect("a readable folder entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
        .collect();
    files.sort();
    let documents = files.iter().map(|path| {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{} is not readable: {e}", path.display()));
        let document = parse(&text)
            .unwrap_or_else(|e| panic!("{} is not a valid {suite} file: {e}", path.display()));
        let name = path
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
        (name, document)
    });
    Some(documents.collect())
}
