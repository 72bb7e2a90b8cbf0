//! Source adapters: components that bring events from outside into a sink (usually a
//! broker's ingress), with Knative's source semantics (`spec.sink`, `spec.ceOverrides`,
//! `status.sinkUri`).
