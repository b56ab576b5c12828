//! The records the hub keeps and the settings they carry, below every layer that acts on them:
//! applications, endpoints, sources, API tokens, events, deliveries and their attempts, trading accounts,
//! orders, fills and positions. Plain data with the rules that belong to the data alone (what
//! an endpoint subscribes to, when an attempt disables its endpoint); the store keeps them,
//! and ingest, render, dispatch and the exchange give them behaviour.

pub mod account;
pub mod application;
pub mod delivery;
pub mod endpoint;
pub mod event;
pub mod labels;
pub mod order;
pub mod render;
pub mod source;
pub mod token;

pub use account::{
    Account, ExchangeSettings, Halt, PaperSettings, PositionMode, PositionSide, RiskLimits,
    VenueKind, position_side,
};
pub use application::{Application, ApplicationSettings, PortalLink, Quotas};
pub use delivery::{
    Attempt, AttemptRecord, Delivery, DeliveryFilter, DeliveryJob, DeliveryStatus, Disabled,
    Health, Lease, NewDelivery, NextStep, Recorded,
};
pub use endpoint::{DeliveryPolicy, Endpoint, Ordering};
pub use event::{EventFilter, IngestOutcome, NewEvent, StoredEvent};
pub use labels::{LabelFilter, Labels};
pub use order::{
    Fill, Order, OrderKind, OrderRequest, OrderRoute, OrderStatus, Position, Rejection, Side,
    Sizing,
};
pub use source::Source;
pub use token::{ApiToken, TokenScope};
