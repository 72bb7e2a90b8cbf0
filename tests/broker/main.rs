//! The data path: ingress, delivery, destinations, backpressure, many triggers, replicas and scale-out, durability under kill -9 and storage faults, traces over OTLP.

mod backpressure;
mod data_plane_replicas;
mod delivery;
mod destinations;
mod durability;
mod ingress;
mod many_triggers;
mod scale_out;
mod storage_faults;
mod traces;
