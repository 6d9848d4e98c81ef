//! `OrderService` on a serving node that does not execute orders.
//!
//! A cluster keeps one order executor (the process with the journal and the
//! liquidity provider); every other process is started with
//! `--orders-upstream URL` and forwards each `OrderService` call there with
//! the caller's own credentials. So a `client_order_id` retried on any node
//! reaches the one journal, and fills at most once per subject across the
//! cluster, with the executor's own single-flight and journal as the only
//! guard (no second copy of the idempotency rule to keep in step).
//!
//! The node checks the token itself first (its auth layer runs before this),
//! so a forged or expired one never travels; the executor checks it again.
//! When the executor cannot be reached, calls fail with `UNAVAILABLE` saying
//! so; a `PlaceOrder` whose answer was lost says that the outcome is
//! unknown and that retrying the same `client_order_id` is safe.

use std::{path::Path, sync::Arc, time::Duration};

use futures_util::StreamExt;
use fxcast_proto::{
    Bearer, authed,
    v1::{
        GetOrderRequest, ListOrdersRequest, ListOrdersResponse, Order, PlaceOrderRequest,
        StreamOrderEventsRequest, order_service_client::OrderServiceClient,
        order_service_server::OrderService,
    },
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, transport::Channel};

use super::{
    OrderServiceImpl,
    service::{EventStream, events_end},
};
use crate::auth::{Caller, TokenAuthority, unless_ended};

/// Where a serving node sends its orders (`--orders-upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrdersUpstream {
    /// The executor's gRPC URL, `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    /// PEM CA file an `https://` executor's certificate must chain to
    /// (else Mozilla's roots).
    pub ca: Option<std::path::PathBuf>,
}

/// Forwards `OrderService` calls to the cluster's order executor.
#[derive(Debug, Clone)]
pub struct OrderForwarder {
    channel: Channel,
    url: Arc<str>,
    authority: TokenAuthority,
    shutdown: CancellationToken,
}

impl OrderForwarder {
    /// A forwarder to `upstream`; connects on first use (and again after
    /// every lost connection), so a node starts while the executor is down.
    ///
    /// # Errors
    /// [`crate::Error::Config`] when the URL or its CA file is unusable.
    pub fn new(
        upstream: &OrdersUpstream,
        authority: TokenAuthority,
        shutdown: CancellationToken,
    ) -> Result<Self, crate::Error> {
        let channel = endpoint(&upstream.url, upstream.ca.as_deref())?.connect_lazy();
        Ok(Self {
            channel,
            url: upstream.url.as_str().into(),
            authority,
            shutdown,
        })
    }

    /// The executor's client, carrying the caller's own `authorization`.
    fn client<T>(
        &self,
        request: &Request<T>,
    ) -> Result<OrderServiceClient<fxcast_proto::Authed>, Status> {
        let bearer = match request.metadata().get("authorization") {
            Some(value) => Bearer::header(value.to_str().map_err(|_| {
                Status::unauthenticated("malformed authorization header: expected `Bearer <token>`")
            })?)?,
            None => Bearer::none(),
        };
        Ok(OrderServiceClient::new(authed(
            self.channel.clone(),
            bearer,
        )))
    }

    /// The executor's answer, with a failure to reach it said as such.
    fn relay<T>(
        &self,
        result: Result<Response<T>, Status>,
        unknown: &str,
    ) -> Result<Response<T>, Status> {
        result.map_err(|status| match status.code() {
            // A status the executor sent has no source; one made here from
            // a connection or protocol failure carries that failure.
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
                if std::error::Error::source(&status).is_some() =>
            {
                tracing::warn!(upstream = %self.url, error = %status.message(), "order executor unreachable");
                Status::unavailable(format!(
                    "the order executor at {} is unreachable ({}){unknown}",
                    self.url,
                    status.message()
                ))
            }
            _ => status,
        })
    }
}

/// The executor's endpoint, as the gateway reaches its upstream: no Nagle
/// delay, keepalives that notice a dead executor within half a minute.
fn endpoint(url: &str, ca: Option<&Path>) -> Result<tonic::transport::Endpoint, crate::Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| crate::Error::Config(format!("--orders-upstream {url:?}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    fxcast_listener::tls::client_endpoint(endpoint, ca)
        .map_err(|e| crate::Error::Config(format!("--orders-upstream {url:?}: {e}")))
}

/// How long a unary call may take at the executor when its client set no
/// deadline of its own.
const UNARY_DEADLINE: Duration = Duration::from_secs(30);

/// `request`'s message for the executor, with the client's deadline
/// (`grpc-timeout`), or [`UNARY_DEADLINE`] for a unary call without one,
/// so a hung executor never holds a call here for ever.
fn forwarded<T>(request: Request<T>, unary: bool) -> Request<T> {
    let deadline = request.metadata().get("grpc-timeout").cloned();
    let mut forwarded = Request::new(request.into_inner());
    match deadline {
        Some(value) => {
            forwarded.metadata_mut().insert("grpc-timeout", value);
        }
        None if unary => forwarded.set_timeout(UNARY_DEADLINE),
        None => {}
    }
    forwarded
}

/// What a call on an order that may have been placed says when the answer
/// was lost.
const OUTCOME_UNKNOWN: &str = "; the order may or may not have been placed: retry with the same client_order_id, which fills at most once";

#[tonic::async_trait]
impl OrderService for OrderForwarder {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let mut client = self.client(&request)?;
        let result = client.place_order(forwarded(request, true)).await;
        self.relay(result, OUTCOME_UNKNOWN)
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let mut client = self.client(&request)?;
        let result = client.get_order(forwarded(request, true)).await;
        self.relay(result, "")
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let mut client = self.client(&request)?;
        let result = client.list_orders(forwarded(request, true)).await;
        self.relay(result, "")
    }

    type StreamOrderEventsStream = EventStream;

    async fn stream_order_events(
        &self,
        request: Request<StreamOrderEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = Caller::of(&request)?;
        // This node's revocations and shutdown end the stream too, as they
        // end a local one.
        let mut end = events_end(&self.authority, caller, &self.shutdown);
        let mut client = self.client(&request)?;
        let result = client.stream_order_events(forwarded(request, false)).await;
        let mut events = self.relay(result, "")?.into_inner();
        let stream = async_stream::try_stream! {
            while let Some(event) = unless_ended(&mut end, events.next()).await? {
                yield event?;
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

/// `OrderService` of this process: executed here, or forwarded to the
/// cluster's executor.
#[derive(Debug, Clone)]
pub enum OrderRoute {
    /// This process journals and executes orders.
    Local(OrderServiceImpl),
    /// Orders go to the executor at `--orders-upstream`.
    Upstream(OrderForwarder),
}

/// Calls `$method` on whichever service this route is.
macro_rules! route {
    ($route:expr, $method:ident($request:expr)) => {
        match $route {
            OrderRoute::Local(local) => local.$method($request).await,
            OrderRoute::Upstream(upstream) => upstream.$method($request).await,
        }
    };
}

#[tonic::async_trait]
impl OrderService for OrderRoute {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        route!(self, place_order(request))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        route!(self, get_order(request))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        route!(self, list_orders(request))
    }

    type StreamOrderEventsStream = EventStream;

    async fn stream_order_events(
        &self,
        request: Request<StreamOrderEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        route!(self, stream_order_events(request))
    }
}
