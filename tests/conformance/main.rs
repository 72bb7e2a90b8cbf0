//! Conformance: the CESQL TCK, the CloudEvents JSON vectors, the official SDKs, Knative's samples and property tests.

mod cesql_tck;
mod cloudevents_json_conformance;
mod knative_samples;
mod properties;
mod sdks;
