//! The project's own artefacts: deployment manifests, the docs' examples and the function scaffolds.

mod dashboard;
mod deploy;
mod docs_examples;
mod scaffold;
