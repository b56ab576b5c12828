//! The OpenAPI 3.1 document: its header here, its paths and schemas from the handlers'
//! `#[utoipa::path]` annotations (collected by the router itself), and the answers every
//! operation shares added by [`conventions`].

use utoipa::OpenApi as _;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Components, OpenApi, RefOr, Response, ResponseBuilder};

use super::error::ErrorBody;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "tradehook",
        description = "Self-hosted trading webhook hub: the management API (`/api/v1`, \
            Bearer API token), the inbound webhook paths (`/in/{source}`), health and metrics. \
            Every error answer has the body `ErrorBody`. An application's key (provider mode) \
            sees only its application's records, on the operations that take the \
            `application` parameter; the operator's tokens act on behalf of an application \
            with that parameter.",
    ),
    security(("token" = []), ("api_key" = [])),
    components(schemas(ErrorBody)),
    tags(
        (name = "endpoints", description = "Where deliveries go"),
        (name = "sources", description = "Where events come from"),
        (name = "events", description = "The publisher API and the event log"),
        (name = "deliveries", description = "The delivery log"),
        (name = "tokens", description = "API tokens"),
        (name = "stats", description = "How the hub is doing"),
        (name = "accounts", description = "Trading accounts, where orders go, and their kill switch"),
        (name = "applications", description = "A provider's customers, with their own API keys, endpoints and deliveries"),
        (name = "inbound", description = "Webhooks from senders"),
        (name = "health", description = "Liveness, readiness, metrics"),
    )
)]
struct Header;

/// The document before the routes add their paths.
pub fn document() -> OpenApi {
    let mut doc = Header::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.info.license = None;
    let components = doc.components.get_or_insert_with(Components::new);
    components.add_security_scheme(
        "token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API token (`thk_…`)"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
            utoipa::openapi::security::ApiKeyValue::with_description(
                "X-API-Key",
                "The same token in the `X-API-Key` header, as the subscription API's clients send it",
            ),
        )),
    );
    doc
}

/// Adds to every management operation the answers any of them may give, so that each
/// operation's annotation lists only its own.
pub fn conventions(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.patch,
            &mut item.put,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            name_and_describe(operation);
        }
        if !path.starts_with("/api/v1/") {
            continue;
        }
        use axum::http::Method;
        let operations = [
            (&mut item.get, Method::GET),
            (&mut item.post, Method::POST),
            (&mut item.patch, Method::PATCH),
            (&mut item.put, Method::PUT),
            (&mut item.delete, Method::DELETE),
        ];
        for (operation, method) in operations {
            if let Some(operation) = operation.as_mut() {
                if super::for_applications(&method, path) {
                    on_behalf_parameter(operation);
                }
                shared_answers(operation, path.contains('{'), method != Method::GET);
            }
        }
    }
}

/// Operation ids unique over the document (`endpoints_list`, not `list`), and a description on
/// every answer, as OpenAPI requires.
fn name_and_describe(operation: &mut Operation) {
    let tag = operation
        .tags
        .as_ref()
        .and_then(|t| t.first())
        .cloned()
        .unwrap_or_default();
    if let Some(id) = operation.operation_id.as_mut() {
        *id = format!("{tag}_{id}");
    }
    for answer in operation.responses.responses.values_mut() {
        if let RefOr::T(answer) = answer
            && answer.description.is_empty()
        {
            answer.description = "Success".to_owned();
        }
    }
}

/// The `application` query parameter of the operations an application may call.
fn on_behalf_parameter(operation: &mut Operation) {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    let parameter = ParameterBuilder::new()
        .name("application")
        .parameter_in(ParameterIn::Query)
        .description(Some(
            "With an operator's token: act on behalf of this application (its id or uid), seeing \
             only its records. An application's own key always acts on its application.",
        ))
        .schema(Some(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .pattern(Some(r"^[A-Za-z0-9_.:-]{1,64}$")),
        ))
        .build();
    operation
        .parameters
        .get_or_insert_with(Vec::new)
        .push(RefOr::T(parameter));
}

fn shared_answers(operation: &mut Operation, has_id: bool, writes: bool) {
    let on_behalf = operation.parameters.as_ref().is_some_and(|p| {
        p.iter()
            .any(|p| matches!(p, RefOr::T(p) if p.name == "application"))
    });
    let has_input = operation.request_body.is_some()
        || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let mut add = |status: &str, description: &str| {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error(description));
    };
    add("401", "No API token, or not a valid one");
    if writes {
        add(
            "403",
            "A read-only token may not write; an application's key may not use the operator's routes",
        );
    } else {
        add(
            "403",
            "An application's key may not use the operator's routes",
        );
    }
    if operation.request_body.is_some() {
        add("400", "The body is not valid JSON");
    }
    if has_input {
        add("422", "Invalid input: one entry per field in `errors`");
    }
    if has_id || on_behalf {
        add("404", "No such resource (or no such application)");
    }
    add(
        "429",
        "Over the application's rate limit: see `Retry-After`",
    );
    add("500", "The hub could not complete the request; see its log");
    add("503", "The hub is shutting down or overloaded; send again");
}

/// A point in time as the API reads it: RFC 3339 text or Unix seconds.
pub fn time() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(TIME_PATTERN))
                .examples(["2026-11-23T09:30:00Z"]),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .examples([1795000000]),
        )
        .description(Some("RFC 3339 or Unix seconds"))
        .build()
        .into()
}

/// RFC 3339 text or Unix seconds, as a query parameter.
pub const TIME_PATTERN: &str = r"^(-?[0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$";

fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}
