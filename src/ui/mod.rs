//! The dashboard at `/ui`: server-rendered pages over the same services as the API, with
//! their templates, stylesheet and one small script (the events page's live tail) embedded in
//! the binary, and nothing from another origin.
//!
//! Signing in takes an API token and gives a session: a random id in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` over TLS), kept in memory with the token's hash, idle
//! for at most 30 minutes and alive for at most 12 hours. Each request checks that the token
//! still exists, so deleting the token ends its sessions. Every form carries the session's
//! CSRF token (the sign-in form a cookie-bound one), and every page is sent with a
//! `Content-Security-Policy` of `default-src 'self'`. A read-only token's session sees no
//! write controls and is refused on write routes.

mod pages;

use axum::Router;
use axum::routing::{get, post};

use crate::api::AppState;

/// The dashboard's routes, over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/portal", get(pages::portal_form))
        .route("/ui/portal", post(pages::open_portal))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/events", get(pages::events))
        .route("/ui/events/stream", get(pages::tail))
        .route("/ui/events/{id}", get(pages::event))
        .route("/ui/deliveries", get(pages::deliveries))
        .route("/ui/deliveries/{id}", get(pages::delivery))
        .route("/ui/deliveries/{id}/retry", post(pages::retry))
        .route("/ui/endpoints/{id}/recover", post(pages::recover))
        .route("/ui/endpoints/{id}/replay", get(pages::replay_progress))
        .route("/ui/sources", get(pages::sources))
        .route("/ui/sources/{name}/try", post(pages::try_source))
        .route("/ui/accounts", get(pages::accounts))
        .route("/ui/accounts/{id}", get(pages::account))
        .route("/ui/accounts/{id}/halt", post(pages::halt))
        .route("/ui/accounts/{id}/resume", post(pages::resume))
        .route("/ui/endpoints", get(pages::endpoints))
        .route("/ui/endpoints/{id}/enabled", post(pages::set_enabled))
        .route("/ui/endpoints/{id}/rotate", post(pages::rotate))
        .route("/ui/endpoints/{id}/test", post(pages::test))
        .route(
            "/ui/endpoints/{id}/templates",
            get(pages::edit_templates).post(pages::save_templates),
        )
        .route("/ui/assets/app.css", get(pages::stylesheet))
        .route("/ui/assets/tail.js", get(pages::tail_script))
        .route("/ui/assets/portal.js", get(pages::portal_script))
        .route("/ui/assets/templates.js", get(pages::templates_script))
        .with_state(state)
}
