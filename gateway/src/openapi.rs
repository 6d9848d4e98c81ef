//! The OpenAPI 3 document, generated from the handlers and JSON types.

use axum::Json;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{
    error::{ErrorBody, ErrorDetail},
    json::{
        ClientMessage, MomentoAccessJson, RateJson, RatesJson, ServerMessage, SymbolJson,
        SymbolsJson, TokenJson, TokenRequestJson,
    },
    orders,
    orders::{OrderJson, OrderStatusJson, OrdersJson, PlaceOrderJson, SideJson},
    rest, sse, ws,
};

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fxcast gateway",
        description = "Live FX/crypto rates and orders. Decimals are strings. Streams: WebSocket `GET /v1/stream` \
            (messages ClientMessage / ServerMessage; rates as RateJson with \"type\":\"rate\") and SSE \
            `GET /v1/rates/stream?symbols=...` (`id:` resumes via Last-Event-ID). Streams take the token as \
            `authorization: Bearer` or `?token=`."
    ),
    paths(
        rest::symbols, rest::rates, rest::rate, rest::issue_token, rest::issue_momento_access, orders::place, orders::get, orders::list,
        ws::upgrade, sse::stream, rest::healthz, rest::readyz, rest::metrics
    ),
    components(schemas(
        RateJson, RatesJson, SymbolJson, SymbolsJson, TokenJson, MomentoAccessJson, TokenRequestJson, ClientMessage, ServerMessage,
        ErrorBody, ErrorDetail, PlaceOrderJson, OrderJson, OrdersJson, SideJson, OrderStatusJson
    )),
    modifiers(&BearerScheme)
)]
pub(crate) struct ApiDoc;

pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
