//! edgefuse: text, vision and audio encoders in tract, fused embeddings over MQTT.
//!
//! Data flows left to right: sources → [`preprocess`] → [`encoders`] → fusion → sinks.

pub mod cli;
pub mod commands;
pub mod config;
pub mod cpu;
pub mod encoders;
pub mod error;
pub mod manifest;
pub mod preprocess;
