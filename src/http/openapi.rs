//! The OpenAPI document of the API, generated from the handlers. The
//! repository keeps a copy in `openapi.json`; a test checks it is current.

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{data, error, runs, segments};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "segments",
        description = "Contact segmentation over HTTP: every call is a verb of the `segments` command line. \
Log in with POST /api/login and send `Authorization: Bearer TOKEN` (or HTTP Basic). \
Errors are `{\"error\": {\"code\", \"message\", \"path\"}}`.",
        license(name = "Apache-2.0")
    ),
    paths(
        segments::list, segments::create, segments::show, segments::edit, segments::delete,
        segments::refresh, segments::pause, segments::resume, segments::duplicate,
        segments::add_contacts, segments::remove_contacts, segments::replace_contacts, segments::members, segments::history, segments::export,
        data::preview, data::audience, data::overlap, data::schema, data::imports, data::import, data::sql,
        data::login, data::session, data::logout,
        runs::start, runs::list, runs::show, runs::events,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, error::Holder)),
    modifiers(&Security),
    security(("bearer" = []), ("basic" = [])),
    tags(
        (name = "segments", description = "Segments, their members, previews and audiences"),
        (name = "runs", description = "The nightly recompute and its progress"),
        (name = "base", description = "Imports, schema and read-only SQL"),
        (name = "session", description = "Login and logout"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

/// The document as the repository keeps it.
pub fn json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// `GET /api/openapi.json` (no login needed: it describes, it holds no data).
pub async fn document() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json(),
    )
        .into_response()
}
