//! Render: what an endpoint receives for an event.

pub mod pyfmt;
