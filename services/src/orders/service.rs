//! The tonic implementation of `fxcast.v1.OrderService`.
//!
//! It trusts nothing but the [`Caller`] the auth layer put on the request:
//! every order belongs to the caller's subject, and a caller only ever sees
//! its own orders.

use std::{pin::Pin, time::SystemTime};

use futures_util::Stream;
use fxcast_proto::v1::{
    GetOrderRequest, ListOrdersRequest, ListOrdersResponse, Order, OrderEvent,
    OrderStatus as PbStatus, PlaceOrderRequest, StreamOrderEventsRequest,
    order_service_server::OrderService,
};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::{OrderExecutor, events::FeedItem, journal::ListFilter, model::OrderStatus, validate};
use crate::{
    auth::{Caller, CredentialEnd, Scope, StreamEnd, TokenAuthority, unless_ended},
    quote::quoted,
};

/// Orders per ListOrders page when the request does not say.
const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest ListOrders page; larger requests are served this many.
const MAX_PAGE_SIZE: usize = 1000;

/// `OrderService` over an [`OrderExecutor`].
#[derive(Debug, Clone)]
pub struct OrderServiceImpl {
    executor: OrderExecutor,
    authority: TokenAuthority,
}

impl OrderServiceImpl {
    /// Creates the service. Event streams end with `UNAUTHENTICATED` when
    /// their token expires or `authority` revokes it.
    pub fn new(executor: OrderExecutor, authority: TokenAuthority) -> Self {
        Self {
            executor,
            authority,
        }
    }
}

impl OrderServiceImpl {
    /// Checks a ListOrders `symbol` filter: a symbol this server prices, or
    /// one the caller has orders of (a symbol no longer configured keeps
    /// its history). Anything else is refused as `GetLatestRate` refuses it.
    async fn known_symbol(&self, subject: &str, symbol: &str) -> Result<(), Status> {
        let Err(unknown) = self.executor.symbols().get(symbol) else {
            return Ok(());
        };
        let only_symbol = ListFilter {
            symbol: Some(symbol.to_owned()),
            ..ListFilter::default()
        };
        let held = self
            .executor
            .journal()
            .list(subject, only_symbol, None, 1)
            .await?;
        if held.orders.is_empty() {
            return Err(unknown.into());
        }
        Ok(())
    }
}

/// Reading orders needs `orders:read`, or `orders:place` (a blotter that
/// places orders reads its own).
fn require_read(caller: &Caller) -> Result<(), Status> {
    if caller.scopes.has(&Scope::OrdersRead) || caller.scopes.has(&Scope::OrdersPlace) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "this token lacks the {} scope (or {})",
            Scope::OrdersRead,
            Scope::OrdersPlace
        )))
    }
}

fn time(field: &str, value: Option<prost_types::Timestamp>) -> Result<Option<SystemTime>, Status> {
    value
        .map(|ts| {
            SystemTime::try_from(ts).map_err(|e| {
                Status::invalid_argument(format!("{field} is not a valid timestamp: {e}"))
            })
        })
        .transpose()
}

pub(super) type EventStream = Pin<Box<dyn Stream<Item = Result<OrderEvent, Status>> + Send>>;

/// When an order-event stream of `caller` ends: its token expires or is
/// revoked, or the server shuts down.
pub(super) fn events_end(
    authority: &TokenAuthority,
    caller: &Caller,
    shutdown: &tokio_util::sync::CancellationToken,
) -> StreamEnd {
    CredentialEnd::or_shutdown(
        authority.credential_end(caller),
        shutdown.clone(),
        "server is shutting down; reconnect, then reload with ListOrders",
        ", then reload with ListOrders",
    )
}

#[tonic::async_trait]
impl OrderService for OrderServiceImpl {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let caller = Caller::with_scope(&request, &Scope::OrdersPlace)?;
        let order = self
            .executor
            .place(&caller.subject, request.get_ref())
            .await?;
        Ok(Response::new(order.to_proto()))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let caller = Caller::of(&request)?;
        require_read(caller)?;
        let GetOrderRequest {
            order_id,
            client_order_id,
        } = request.get_ref();
        let order = match (order_id.is_empty(), client_order_id.is_empty()) {
            (true, true) => {
                return Err(Status::invalid_argument(
                    "order_id or client_order_id is required",
                ));
            }
            (false, false) => {
                return Err(Status::invalid_argument(
                    "set order_id or client_order_id, not both",
                ));
            }
            // Another subject's order is answered as one that does not
            // exist, as it is by client_order_id: ids reveal nothing.
            (false, true) => self
                .executor
                .get(order_id)
                .await?
                .filter(|order| order.subject == caller.subject)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "you have no order with order_id {}",
                        quoted(order_id)
                    ))
                })?,
            (true, false) => {
                validate::client_order_id(client_order_id)?;
                self.executor
                    .get_by_client_order_id(&caller.subject, client_order_id)
                    .await?
                    .ok_or_else(|| {
                        Status::not_found(format!(
                            "you have no order with client_order_id {}",
                            quoted(client_order_id)
                        ))
                    })?
            }
        };
        Ok(Response::new(order.to_proto()))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let caller = Caller::of(&request)?;
        require_read(caller)?;
        let req = request.get_ref();
        let status = match PbStatus::try_from(req.status) {
            Ok(status) => OrderStatus::from_proto(status),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "status {} is not an order status",
                    req.status
                )));
            }
        };
        let filter = ListFilter {
            symbol: (!req.symbol.is_empty()).then(|| req.symbol.clone()),
            status,
            created_after: time("created_after", req.created_after)?,
            created_before: time("created_before", req.created_before)?,
        };
        if let Some(symbol) = &filter.symbol {
            self.known_symbol(&caller.subject, symbol).await?;
        }
        let before = if req.page_token.is_empty() {
            None
        } else {
            let cursor = req
                .page_token
                .parse::<i64>()
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "page_token {} is not a next_page_token returned by ListOrders",
                        quoted(&req.page_token)
                    ))
                })?;
            Some(cursor)
        };
        let limit = match usize::try_from(req.page_size).unwrap_or(MAX_PAGE_SIZE) {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let page = self
            .executor
            .journal()
            .list(&caller.subject, filter, before, limit)
            .await?;
        Ok(Response::new(ListOrdersResponse {
            orders: page.orders.iter().map(|o| o.to_proto()).collect(),
            next_page_token: page.next.map(|c| c.to_string()).unwrap_or_default(),
        }))
    }

    type StreamOrderEventsStream = EventStream;

    async fn stream_order_events(
        &self,
        request: Request<StreamOrderEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = Caller::of(&request)?;
        require_read(caller)?;
        let symbols = request.get_ref().symbols.clone();
        for symbol in &symbols {
            self.executor.symbols().get(symbol)?;
        }
        let mut end = events_end(&self.authority, caller, self.executor.shutdown());
        let (feed, mut receiver) = self.executor.subscribe_events(&caller.subject).await?;
        let stream = async_stream::try_stream! {
            // Holding the feed keeps the transport subscription alive.
            let _feed = feed;
            loop {
                match unless_ended(&mut end, receiver.recv()).await? {
                    Ok(FeedItem::Event(order)) => {
                        if symbols.is_empty() || symbols.contains(&order.symbol) {
                            yield OrderEvent { order: Some((*order).clone()) };
                        }
                    }
                    Ok(FeedItem::Lost(message)) => {
                        Err(Status::data_loss(format!("{message}; reconnect, then reload with ListOrders")))?;
                    }
                    Err(RecvError::Lagged(missed)) => {
                        Err(Status::resource_exhausted(format!(
                            "slow consumer: {missed} order events were dropped; reconnect, then reload with ListOrders"
                        )))?;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
