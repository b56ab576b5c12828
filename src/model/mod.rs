//! The settings that records carry, below every layer that acts on them: a source's
//! [`source::SourceSpec`] and an endpoint's [`render::RenderSpec`]. The store keeps them with
//! their records; ingest and render give them behaviour.

pub mod render;
pub mod source;
