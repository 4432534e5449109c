//! Sinks: where results go. Today that is MQTT (embeddings, fused records, labels, errors),
//! through the store-and-forward spool (`mqtt::spool`, which sits with the client that drives it).

pub mod publisher;
pub mod stats;
