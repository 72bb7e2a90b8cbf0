//! Rivulet's control loop: the [`runtime`] runs one reconciler per kind against the store
//! (brokers, triggers, event types, policies; sources and sinks register theirs), resolves
//! destinations and writes status; [`api`] serves the resources over HTTP.
#![forbid(unsafe_code)]

pub mod api;
pub mod graph;
pub mod runtime;

// What `register_kind!` expands to names these through this crate, so a kind's crate needs
// nothing more than this one.
#[doc(hidden)]
pub use {inventory as __inventory, kube as __kube, rivulet_core as __core};

/// Registers a custom kind in one place: its [`KindInfo`](rivulet_core::resources::KindInfo)
/// (API names and validation), its CRD from the `kube::CustomResource` type, and its
/// reconciler, a type implementing [`Reconcile`](runtime::Reconcile). Source and sink crates
/// wrap it with their generic reconcilers.
#[macro_export]
macro_rules! register_kind {
    (
        kind: $kind:expr,
        resource: $resource:ty,
        group: $group:literal,
        version: $version:literal,
        plural: $plural:expr,
        validate: $validate:path,
        reconciler: $reconciler:ty $(,)?
    ) => {
        $crate::__inventory::submit! {
            $crate::__core::resources::KindInfo {
                group: $group,
                version: $version,
                kind: $kind,
                plural: $plural,
                validate: $validate,
            }
        }
        $crate::__inventory::submit! {
            $crate::__core::resources::CrdVersion {
                crd: <$resource as $crate::__kube::CustomResourceExt>::crd,
            }
        }
        $crate::__inventory::submit! {
            $crate::runtime::Reconciler::of::<$reconciler>($kind)
        }
    };
}
