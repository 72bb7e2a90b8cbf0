//! The conventions every Knative-style kind shares, written once. A kind's spec struct takes
//! them with `#[apply(knative_kind!)]` (or `knative_source!`, `knative_sink!`) and adds only
//! its own `#[kube(...)]` names, columns and labels. Printer columns come in Knative's order: a
//! source's `Sink` first, then the kind's own, a sink's `URL`, then `Age`, `Ready` and `Reason`.

/// A namespaced kind in the `all` and `knative` categories, deriving kube's `CustomResource`
/// (with `Debug`, `Clone`, `PartialEq`, `Default` and the serde and schema traits), with
/// Knative's `Age`, `Ready` and `Reason` printer columns. Fields of type `Option` are left out
/// of its JSON when `None` ([`skip_serializing_none`](crate::resources::skip_serializing_none)).
#[macro_export]
macro_rules! knative_kind {
    ($(#[$attribute:meta])* $visibility:vis struct $spec:ident $($body:tt)*) => {
        #[$crate::resources::skip_serializing_none]
        #[derive(
            ::kube::CustomResource,
            Debug,
            Clone,
            PartialEq,
            ::serde::Serialize,
            ::serde::Deserialize,
            ::schemars::JsonSchema,
            Default
        )]
        #[kube(namespaced, category = "all", category = "knative")]
        $(#[$attribute])*
        #[kube(
            printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
            printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
            printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
        )]
        $visibility struct $spec $($body)*
    };
}

/// A source: a [`knative_kind!`] in the `sources` category with the source duck's labels,
/// `SourceStatus` (which must be in scope) and a `Sink` column before the kind's own.
#[macro_export]
macro_rules! knative_source {
    ($(#[$attribute:meta])* $visibility:vis struct $spec:ident $($body:tt)*) => {
        $crate::knative_kind! {
            #[kube(status = "SourceStatus", category = "sources")]
            #[kube(
                label("duck.knative.dev/source", "true"),
                label("eventing.knative.dev/source", "true"),
                printcolumn = r#"{"name":"Sink","type":"string","jsonPath":".status.sinkUri"}"#
            )]
            $(#[$attribute])*
            $visibility struct $spec $($body)*
        }
    };
}

/// A sink: an addressable [`knative_kind!`] in the `eventing` category, with `SinkStatus`
/// (which must be in scope) and a `URL` column after the kind's own.
#[macro_export]
macro_rules! knative_sink {
    ($(#[$attribute:meta])* $visibility:vis struct $spec:ident $($body:tt)*) => {
        $crate::knative_kind! {
            $(#[$attribute])*
            #[kube(status = "SinkStatus", category = "eventing")]
            #[kube(
                label("duck.knative.dev/addressable", "true"),
                printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#
            )]
            $visibility struct $spec $($body)*
        }
    };
}
