//! Orders over REST and order events for the WebSocket.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::HeaderMap,
};
use fxcast_proto::v1::{
    GetOrderRequest, ListOrdersRequest, Order, OrderStatus, PlaceOrderRequest, RejectReason, Side,
    order_service_client::OrderServiceClient,
};
use fxcast_services::quote::{bound_quoted_spans, quoted};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    json::rfc3339,
    metrics::OrderLabels,
    rest::ApiJson,
    session::credential,
    upstream::{Authed, Bearer},
};

/// `POST /v1/orders`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderJson {
    /// Your id for the order, 1-64 of `[A-Za-z0-9._-]`; retrying with the same id never fills twice.
    pub client_order_id: String,
    /// e.g. `USD_JPY`.
    pub symbol: String,
    /// `buy` or `sell`.
    #[schema(value_type = SideJson)]
    pub side: String,
    /// Decimal string, e.g. `"1000"`.
    pub quantity: String,
    /// The price you saw (ask for buy, bid for sell), decimal string.
    pub price: String,
    /// The `rate_id` of the rate you saw (optional).
    #[serde(default)]
    pub rate_id: Option<String>,
    /// A tighter tolerance than the server's, e.g. `"0.005"` or `"2bp"` (optional).
    #[serde(default)]
    pub tolerance: Option<String>,
}

/// Side of an order. Requests carry it as a string checked by hand
/// (case-insensitive, and the error says what was wrong); answers carry
/// this enum.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[schema(as = Side)]
#[serde(rename_all = "lowercase")]
pub enum SideJson {
    /// Buy at the ask.
    Buy,
    /// Sell at the bid.
    Sell,
    /// Never on a stored order (validation refuses it); kept so an
    /// upstream bug shows as such instead of a wrong side. Not in the
    /// OpenAPI schema.
    #[serde(skip_deserializing)]
    Unspecified,
}

impl From<Side> for SideJson {
    fn from(side: Side) -> Self {
        match side {
            Side::Buy => Self::Buy,
            Side::Sell => Self::Sell,
            Side::Unspecified => Self::Unspecified,
        }
    }
}

/// Status of an order.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[schema(as = OrderStatus)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatusJson {
    /// Filled at `fill_price`.
    Filled,
    /// Not filled; `reject_reason` and `message` say why.
    Rejected,
    /// Sent to the liquidity provider; the outcome is not known yet.
    Pending,
    /// Never on a stored order. Not in the OpenAPI schema.
    #[serde(skip_deserializing)]
    Unspecified,
}

impl OrderStatusJson {
    /// The name as serialised (`filled`), e.g. for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filled => "filled",
            Self::Rejected => "rejected",
            Self::Pending => "pending",
            Self::Unspecified => "unspecified",
        }
    }
}

impl From<OrderStatus> for OrderStatusJson {
    fn from(status: OrderStatus) -> Self {
        match status {
            OrderStatus::Filled => Self::Filled,
            OrderStatus::Rejected => Self::Rejected,
            OrderStatus::Pending => Self::Pending,
            OrderStatus::Unspecified => Self::Unspecified,
        }
    }
}

/// An order and its outcome.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct OrderJson {
    /// Server id.
    pub order_id: String,
    /// The client's id.
    pub client_order_id: String,
    /// Owner.
    pub subject: String,
    /// Symbol.
    pub symbol: String,
    /// `buy` or `sell`.
    pub side: SideJson,
    /// Quantity.
    pub quantity: String,
    /// The price the client saw.
    pub price: String,
    /// `filled`, `rejected` or `pending`.
    pub status: OrderStatusJson,
    /// Why it was rejected (`price_moved`, `stale_price`, `unknown_rate`, `lp_rejected`, `duplicate_order_id`).
    pub reject_reason: Option<String>,
    /// Human explanation with the numbers compared.
    pub message: String,
    /// Fill price when filled.
    pub fill_price: Option<String>,
    /// The live price it was checked against.
    pub market_price: Option<String>,
    /// Tolerance applied.
    pub applied_tolerance: Option<String>,
    /// Liquidity provider's execution id.
    pub lp_execution_id: Option<String>,
    /// RFC 3339.
    pub created_at: Option<String>,
    /// RFC 3339.
    pub updated_at: Option<String>,
}

fn some(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

fn snake(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

impl From<Order> for OrderJson {
    fn from(order: Order) -> Self {
        let reason = match order.reject_reason() {
            RejectReason::Unspecified => None,
            other => Some(snake(other.as_str_name(), "REJECT_REASON_")),
        };
        Self {
            status: order.status().into(),
            side: order.side().into(),
            reject_reason: reason,
            order_id: order.order_id,
            client_order_id: order.client_order_id,
            subject: order.subject,
            symbol: order.symbol,
            quantity: order.quantity,
            price: order.price,
            message: order.message,
            fill_price: some(order.fill_price),
            market_price: some(order.market_price),
            applied_tolerance: some(order.applied_tolerance),
            lp_execution_id: some(order.lp_execution_id),
            created_at: rfc3339(order.created_at),
            updated_at: rfc3339(order.updated_at),
        }
    }
}

/// `GET /v1/orders`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrdersJson {
    /// Newest first.
    pub orders: Vec<OrderJson>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

/// Filters of `GET /v1/orders`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only this symbol.
    symbol: Option<String>,
    /// Only `filled`, `rejected` or `pending`.
    status: Option<String>,
    /// Only orders created at or after this time (RFC 3339, e.g. `2026-11-29T09:00:00Z`).
    created_after: Option<String>,
    /// Only orders created before this time (RFC 3339).
    created_before: Option<String>,
    /// Page size (default and maximum are the server's).
    page_size: Option<u32>,
    /// From a previous response.
    page_token: Option<String>,
}

pub(crate) fn client(state: &AppState, bearer: Bearer) -> OrderServiceClient<Authed> {
    OrderServiceClient::new(state.upstream.with(bearer))
}

/// Places an order at the price the client saw.
#[utoipa::path(post, path = "/v1/orders", tag = "orders", request_body = PlaceOrderJson,
    responses((status = 200, body = OrderJson, description = "filled or rejected (see status)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn place(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PlaceOrderJson>,
) -> Result<Json<OrderJson>, ApiError> {
    let bearer = credential(&headers, None)?;
    let side = match body.side.to_ascii_lowercase().as_str() {
        "buy" => Side::Buy,
        "sell" => Side::Sell,
        other => {
            return Err(ApiError::bad_request(format!(
                "side must be \"buy\" or \"sell\", got {}",
                quoted(other)
            )));
        }
    };
    let request = PlaceOrderRequest {
        client_order_id: body.client_order_id,
        symbol: body.symbol,
        side: side as i32,
        quantity: body.quantity,
        price: body.price,
        rate_id: body.rate_id.unwrap_or_default(),
        tolerance: body.tolerance.unwrap_or_default(),
    };
    let order = OrderJson::from(
        client(&state, bearer)
            .place_order(request)
            .await?
            .into_inner(),
    );
    state
        .metrics
        .orders
        .get_or_create(&OrderLabels {
            status: order.status.as_str().to_owned(),
        })
        .inc();
    Ok(Json(order))
}

/// One of the caller's orders.
#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path, description = "server order id")),
    responses((status = 200, body = OrderJson), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(order_id): Path<String>,
) -> Result<Json<OrderJson>, ApiError> {
    let bearer = credential(&headers, None)?;
    let order = client(&state, bearer)
        .get_order(GetOrderRequest {
            order_id,
            client_order_id: String::new(),
        })
        .await?
        .into_inner();
    Ok(Json(order.into()))
}

/// The caller's orders, newest first, paginated.
#[utoipa::path(get, path = "/v1/orders", tag = "orders", params(ListQuery),
    responses((status = 200, body = OrdersJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<OrdersJson>, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(bound_quoted_spans(&e.body_text())))?;
    let bearer = credential(&headers, None)?;
    let status = match query.status.as_deref() {
        None => OrderStatus::Unspecified,
        Some(name) => {
            OrderStatus::from_str_name(&format!("ORDER_STATUS_{}", name.to_ascii_uppercase()))
                .filter(|s| *s != OrderStatus::Unspecified)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "status must be filled, rejected or pending, got {}",
                        quoted(name)
                    ))
                })?
        }
    };
    let time = |name: &str, value: Option<&str>| {
        value
            .map(|text| {
                humantime::parse_rfc3339_weak(text)
                    .map(fxcast_proto::Timestamp::from)
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "{name} must be an RFC 3339 time such as 2026-11-29T09:00:00Z, got {}: {e}",
                            quoted(text)
                        ))
                    })
            })
            .transpose()
    };
    let created_after = time("created_after", query.created_after.as_deref())?;
    let created_before = time("created_before", query.created_before.as_deref())?;
    let response = client(&state, bearer)
        .list_orders(ListOrdersRequest {
            symbol: query.symbol.unwrap_or_default(),
            status: status as i32,
            created_after,
            created_before,
            page_size: query.page_size.unwrap_or(0),
            page_token: query.page_token.unwrap_or_default(),
        })
        .await?
        .into_inner();
    Ok(Json(OrdersJson {
        orders: response.orders.into_iter().map(OrderJson::from).collect(),
        next_page_token: some(response.next_page_token),
    }))
}

/// An order event on the WebSocket: `{"type":"order", ...OrderJson}`.
#[derive(Serialize)]
pub(crate) struct OrderMessage<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    #[serde(flatten)]
    pub(crate) order: &'a OrderJson,
}
