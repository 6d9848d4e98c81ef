//! The order pipeline: validate, deduplicate, price-check, deal, journal,
//! publish.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fxcast_proto::v1::PlaceOrderRequest;
use fxcast_transport::{Backoff, BackoffPolicy, Transport};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rust_decimal::Decimal;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    OrdersConfig,
    events::{self, FeedItem, OrderEventHub, SubjectFeed},
    journal::{OrderJournal, Recorded},
    lp::{LiquidityProvider, LpError, LpOrder, LpOutcome},
    model::{self, OrderRecord, OrderStatus, OrderTerms, RejectReason, new_order_id},
    price_check::{self, CheckLimits, LiveRate, QuotedRate, Verdict},
    validate,
};
use crate::{Error, LatestRates, RateHub, SymbolTable, Tick};

/// Waits between attempts to confirm an unknown LP outcome.
const RESOLVE_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(30));
/// How long start-up waits for the LP to confirm one pending order before
/// leaving it to the background.
const STARTUP_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

type Key = (String, String);

/// What followers of an in-flight order see: `None` while it runs, then
/// `Some(Some(order))` once it is durable, or `Some(None)` when the attempt
/// failed without recording anything (followers then try themselves).
type Shared = Option<Option<Arc<OrderRecord>>>;

/// Executes orders: the whole pipeline from request to durable outcome.
/// A cheap `Clone` handle.
#[derive(Clone)]
pub struct OrderExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    symbols: SymbolTable,
    latest: LatestRates,
    hub: RateHub,
    transport: Arc<dyn Transport>,
    journal: OrderJournal,
    lp: Arc<dyn LiquidityProvider>,
    config: OrdersConfig,
    events: OrderEventHub,
    // Orders being executed in this process, by (subject, client_order_id):
    // concurrent retries wait for the first attempt instead of racing it.
    // A std mutex: held only for a map lookup or insert.
    inflight: Mutex<HashMap<Key, watch::Receiver<Shared>>>,
    rng: Mutex<StdRng>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for OrderExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderExecutor")
            .field("journal", &self.inner.journal)
            .field("lp", &self.inner.lp)
            .field("policy", &self.inner.config.policy)
            .finish_non_exhaustive()
    }
}

/// Removes the in-flight entry and wakes the followers, also when the
/// attempt panics.
struct InflightGuard {
    executor: OrderExecutor,
    key: Key,
    sender: watch::Sender<Shared>,
    outcome: Option<Arc<OrderRecord>>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.executor
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        self.sender.send_replace(Some(self.outcome.take()));
    }
}

enum Claim {
    Lead(watch::Sender<Shared>),
    Follow(watch::Receiver<Shared>),
}

impl OrderExecutor {
    /// Starts order execution over the rate core's pieces, then resolves
    /// orders a previous run left PENDING (asking the LP what became of
    /// them) before returning.
    ///
    /// # Errors
    /// [`Error::Config`] for bad LP settings, [`Error::Journal`] when the
    /// journal cannot be read.
    pub async fn start(
        config: &OrdersConfig,
        journal: OrderJournal,
        symbols: SymbolTable,
        latest: LatestRates,
        hub: RateHub,
        transport: Arc<dyn Transport>,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        let lp = config.lp.build()?;
        let executor = Self {
            inner: Arc::new(Inner {
                symbols,
                latest,
                hub,
                events: OrderEventHub::new(Arc::clone(&transport)),
                transport,
                journal,
                lp,
                config: config.clone(),
                inflight: Mutex::default(),
                rng: Mutex::new(StdRng::from_os_rng()),
                shutdown,
            }),
        };
        let pending = executor.inner.journal.pending().await?;
        if !pending.is_empty() {
            tracing::warn!(
                count = pending.len(),
                "resolving orders left pending by the previous run"
            );
        }
        for order in pending {
            let resolved =
                tokio::time::timeout(STARTUP_RESOLVE_TIMEOUT, executor.try_resolve(&order)).await;
            if !matches!(resolved, Ok(true)) {
                let background = executor.clone();
                tokio::spawn(async move { background.resolve(order).await });
            }
        }
        tracing::info!(
            journal = %executor.inner.journal.path().display(),
            lp = executor.inner.lp.name(),
            policy = %executor.inner.config.policy,
            "order execution ready"
        );
        Ok(executor)
    }

    /// The journal (for lookups and listing the subject's orders).
    pub fn journal(&self) -> &OrderJournal {
        &self.inner.journal
    }

    /// Places an order for `subject` and returns its final state: FILLED or
    /// REJECTED (a DUPLICATE_ORDER_ID answer has an empty `order_id`: it is
    /// not an order of its own).
    ///
    /// Idempotent per (subject, client_order_id). The work runs in its own
    /// task, so a client that disconnects never leaves an order half done.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] / [`Error::UnknownSymbol`] for an invalid
    /// request (nothing is recorded); [`Error::Unavailable`] when the LP did
    /// not confirm the outcome (retrying is safe); [`Error::Journal`] when
    /// the outcome could not be made durable (not acknowledged; retrying is
    /// safe).
    pub async fn place(
        &self,
        subject: &str,
        request: &PlaceOrderRequest,
    ) -> Result<OrderRecord, Error> {
        let terms = validate::place_order(request, &self.inner.symbols)?;
        let key: Key = (subject.to_owned(), terms.client_order_id.clone());
        loop {
            match self.claim(&key) {
                Claim::Lead(sender) => {
                    let mut guard = InflightGuard {
                        executor: self.clone(),
                        key: key.clone(),
                        sender,
                        outcome: None,
                    };
                    let executor = self.clone();
                    let subject = subject.to_owned();
                    let span = tracing::debug_span!(
                        "order",
                        subject = %subject,
                        client_order_id = %terms.client_order_id,
                        symbol = %terms.symbol,
                    );
                    let task = tokio::spawn(
                        async move {
                            let result = executor.execute(&subject, terms).await;
                            match &result {
                                Ok(order) => {
                                    tracing::debug!(order_id = %order.order_id, status = order.status.as_str(), message = %order.message, "order done");
                                    if !order.order_id.is_empty() && order.is_final() {
                                        guard.outcome = Some(Arc::new(order.clone()));
                                    }
                                }
                                Err(err) => tracing::debug!(error = %err, "order not done"),
                            }
                            drop(guard);
                            result
                        }
                        .instrument(span),
                    );
                    return task.await.map_err(|e| Error::Io {
                        context: "order task failed".into(),
                        source: std::io::Error::other(e),
                    })?;
                }
                Claim::Follow(mut receiver) => {
                    let shared = receiver.wait_for(Option::is_some).await.map(|v| v.clone());
                    if let Ok(Some(Some(order))) = shared {
                        return self.answer_existing(&order, &terms);
                    }
                    // The first attempt recorded nothing: try again.
                }
            }
        }
    }

    fn claim(&self, key: &Key) -> Claim {
        let mut inflight = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(receiver) = inflight.get(key) {
            return Claim::Follow(receiver.clone());
        }
        let (sender, receiver) = watch::channel(None);
        inflight.insert(key.clone(), receiver);
        Claim::Lead(sender)
    }

    /// The answer to a request whose (subject, client_order_id) already has
    /// `existing`: the original order for the same terms, a
    /// DUPLICATE_ORDER_ID rejection for different ones.
    fn answer_existing(
        &self,
        existing: &OrderRecord,
        terms: &OrderTerms,
    ) -> Result<OrderRecord, Error> {
        match existing.terms.difference(terms) {
            None if existing.is_final() => Ok(existing.clone()),
            None => Err(Error::Unavailable(format!(
                "order {} is pending: its outcome is being confirmed with the liquidity provider; \
                 retry shortly or read it with GetOrder",
                existing.order_id
            ))),
            Some(difference) => {
                let now = model::now();
                Ok(OrderRecord {
                    order_id: String::new(),
                    subject: existing.subject.clone(),
                    terms: terms.clone(),
                    status: OrderStatus::Rejected,
                    reject_reason: Some(RejectReason::DuplicateOrderId),
                    message: format!(
                        "client_order_id {} is already used by order {} with {difference}; \
                         use a new client_order_id for a new order",
                        terms.client_order_id, existing.order_id
                    ),
                    market_price: None,
                    market_rate_id: None,
                    applied_tolerance: None,
                    fill_price: None,
                    liquidity_provider: String::new(),
                    lp_execution_id: None,
                    created_at: now,
                    updated_at: now,
                })
            }
        }
    }

    /// The held rate of `symbol` with id `rate_id`.
    fn find_rate(&self, symbol: &str, rate_id: &str) -> Option<Arc<Tick>> {
        self.inner
            .latest
            .get(symbol)
            .filter(|t| t.rate.rate_id == rate_id)
            .or_else(|| self.inner.hub.find(symbol, rate_id))
    }

    fn check(&self, terms: &OrderTerms) -> Result<Verdict, Error> {
        let spec = self.inner.symbols.get(&terms.symbol)?;
        let limits = CheckLimits {
            policy: self.inner.config.policy,
            tolerance: spec.orders.tolerance,
            max_age: spec
                .orders
                .max_price_age
                .unwrap_or(self.inner.config.max_price_age),
        };
        let now = Instant::now();
        let live = self.inner.latest.get(&terms.symbol);
        let quoted = match &terms.rate_id {
            None => QuotedRate::NotGiven,
            Some(id) => QuotedRate::of(self.find_rate(&terms.symbol, id).as_deref(), now),
        };
        Ok(price_check::check(
            terms,
            &limits,
            live.as_deref().map(|tick| LiveRate::of(tick, now)),
            quoted,
        ))
    }

    async fn execute(&self, subject: &str, terms: OrderTerms) -> Result<OrderRecord, Error> {
        if let Some(existing) = self.inner.journal.find(subject, &terms.client_order_id)? {
            return self.answer_existing(&existing, &terms);
        }
        let order = self.checked(subject, terms).await?;
        match order.market_price.filter(|_| order.reject_reason.is_none()) {
            Some(market_price) => self.deal(order, market_price).await,
            None => self.store(order).await,
        }
    }

    /// A new order for `terms` with its price check's verdict: REJECTED
    /// with the reason, or with the market price to deal at.
    async fn checked(&self, subject: &str, terms: OrderTerms) -> Result<OrderRecord, Error> {
        let inner = &*self.inner;
        // A local rate that is not fresh is refreshed from the transport's
        // shared storage (Momento's cache), if it has one.
        if inner.symbols.get(&terms.symbol).is_ok() {
            inner.latest.fresh(&terms.symbol).await;
        }
        let created_at = model::now();
        let verdict = self.check(&terms)?;
        let order_id = new_order_id(
            created_at,
            inner.rng.lock().unwrap_or_else(|e| e.into_inner()).random(),
        );
        Ok(OrderRecord {
            order_id,
            subject: subject.to_owned(),
            terms,
            status: OrderStatus::Rejected,
            reject_reason: verdict.reject,
            message: verdict.message,
            market_price: verdict.market_price,
            market_rate_id: verdict.market_rate_id,
            applied_tolerance: verdict.applied_tolerance,
            fill_price: None,
            liquidity_provider: String::new(),
            lp_execution_id: None,
            created_at,
            updated_at: created_at,
        })
    }

    /// Deals an order that passed the price check with the LP at
    /// `market_price` and records the outcome. An LP that needs it gets a
    /// PENDING intent recorded first, so a crash or a lost answer leaves an
    /// order to confirm rather than an unknown deal.
    async fn deal(
        &self,
        mut order: OrderRecord,
        market_price: Decimal,
    ) -> Result<OrderRecord, Error> {
        let inner = &*self.inner;
        order.liquidity_provider = inner.lp.name().to_owned();
        let lp_order = lp_order(&order, market_price);
        let intent = inner.lp.needs_intent_record();
        let check_message = std::mem::take(&mut order.message);
        if intent {
            order.status = OrderStatus::Pending;
            order.message = format!(
                "sent to {} at {market_price}; {check_message}",
                order.liquidity_provider
            );
            match inner.journal.record(order.clone()).await? {
                Recorded::Existing(existing) => {
                    return self.answer_existing(&existing, &order.terms);
                }
                Recorded::Inserted => events::publish(&inner.transport, &order).await,
            }
        }
        let outcome = match inner.lp.execute(&lp_order).await {
            Ok(outcome) => outcome,
            Err(err) if intent => return Err(self.confirm_later(order, &err)),
            Err(err) => {
                return Err(Error::Unavailable(format!(
                    "{err}; the order is not acknowledged: retry with the same client_order_id \
                     (the liquidity provider never deals one order twice)"
                )));
            }
        };
        apply_outcome(&mut order, outcome, &check_message);
        if intent {
            self.finalize(order).await
        } else {
            self.store(order).await
        }
    }

    /// The LP could not say what became of a PENDING order: it is resolved
    /// in the background, and the caller told to read it later.
    fn confirm_later(&self, order: OrderRecord, err: &LpError) -> Error {
        let order_id = order.order_id.clone();
        let resolver = self.clone();
        tokio::spawn(async move { resolver.resolve(order).await });
        Error::Unavailable(format!(
            "order {order_id}: {err}; its outcome is being confirmed with the liquidity provider, \
             read it with GetOrder (retrying with the same client_order_id is safe)"
        ))
    }

    /// Makes a PENDING order final and publishes its event; when it was
    /// resolved elsewhere meanwhile, the journal has the truth.
    async fn finalize(&self, order: OrderRecord) -> Result<OrderRecord, Error> {
        let journal = &self.inner.journal;
        if !journal.finalize(order.clone()).await? {
            return journal.get(&order.order_id).await?.ok_or_else(|| {
                Error::Unavailable(format!(
                    "order {} vanished from the journal",
                    order.order_id
                ))
            });
        }
        events::publish(&self.inner.transport, &order).await;
        Ok(order)
    }

    /// Records a final order (unless the id is taken, then answers with the
    /// existing one) and publishes its event.
    async fn store(&self, order: OrderRecord) -> Result<OrderRecord, Error> {
        match self.inner.journal.record(order.clone()).await? {
            Recorded::Inserted => {
                events::publish(&self.inner.transport, &order).await;
                Ok(order)
            }
            Recorded::Existing(existing) => self.answer_existing(&existing, &order.terms),
        }
    }

    /// One attempt to learn a PENDING order's outcome from the LP and make
    /// it final. Returns whether the order is final now.
    async fn try_resolve(&self, order: &OrderRecord) -> bool {
        let inner = &*self.inner;
        let lp_order = lp_order(order, order.market_price.unwrap_or(order.terms.price));
        let outcome = match inner.lp.recover(&lp_order).await {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::warn!(order_id = %order.order_id, error = %err, "LP cannot confirm a pending order yet");
                return false;
            }
        };
        let mut resolved = order.clone();
        apply_outcome(
            &mut resolved,
            outcome,
            "confirmed with the liquidity provider after an interruption",
        );
        match inner.journal.finalize(resolved.clone()).await {
            Ok(true) => {
                tracing::info!(order_id = %resolved.order_id, status = resolved.status.as_str(), "pending order resolved");
                events::publish(&inner.transport, &resolved).await;
                true
            }
            Ok(false) => true,
            Err(err) => {
                tracing::warn!(order_id = %order.order_id, error = %err, "cannot record a resolved order yet");
                false
            }
        }
    }

    /// Keeps trying to resolve a PENDING order, backing off, until it is
    /// final or the server shuts down (the next start picks it up then).
    async fn resolve(&self, order: OrderRecord) {
        let mut backoff = Backoff::new(RESOLVE_BACKOFF);
        while !self.try_resolve(&order).await {
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    /// The order with this id, whoever's it is (the caller checks).
    ///
    /// # Errors
    /// [`Error::Journal`] when the read fails.
    pub async fn get(&self, order_id: &str) -> Result<Option<OrderRecord>, Error> {
        self.inner.journal.get(order_id).await
    }

    /// The subject's order with this client_order_id.
    ///
    /// # Errors
    /// [`Error::Journal`] when the read fails.
    pub async fn get_by_client_order_id(
        &self,
        subject: &str,
        client_order_id: &str,
    ) -> Result<Option<OrderRecord>, Error> {
        let journal = self.inner.journal.clone();
        let (subject, client_order_id) = (subject.to_owned(), client_order_id.to_owned());
        tokio::task::spawn_blocking(move || journal.find(&subject, &client_order_id))
            .await
            .map_err(|e| Error::Io {
                context: "order lookup failed".into(),
                source: std::io::Error::other(e),
            })?
    }

    /// The symbols orders may be placed on.
    pub fn symbols(&self) -> &SymbolTable {
        &self.inner.symbols
    }

    /// Cancelled when the server shuts down.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Starts receiving `subject`'s order events.
    pub(crate) async fn subscribe_events(
        &self,
        subject: &str,
    ) -> Result<(Arc<SubjectFeed>, broadcast::Receiver<FeedItem>), Error> {
        self.inner.events.subscribe(subject).await
    }
}

/// `order` as sent to the LP, to deal at `price`, with an idempotency key
/// that is the same for every retry of the order.
fn lp_order(order: &OrderRecord, price: Decimal) -> LpOrder {
    LpOrder {
        // Neither part can contain '/', so the key is unambiguous.
        key: format!("{}/{}", order.subject, order.terms.client_order_id),
        order_id: order.order_id.clone(),
        symbol: order.terms.symbol.clone(),
        side: order.terms.side,
        quantity: order.terms.quantity,
        price,
    }
}

fn apply_outcome(order: &mut OrderRecord, outcome: LpOutcome, check_message: &str) {
    order.updated_at = model::now();
    match outcome {
        LpOutcome::Filled {
            price,
            execution_id,
        } => {
            order.status = OrderStatus::Filled;
            order.reject_reason = None;
            order.fill_price = Some(price);
            order.lp_execution_id = Some(execution_id);
            order.message = format!("filled at {price}; {check_message}");
        }
        LpOutcome::Rejected { message } => {
            order.status = OrderStatus::Rejected;
            order.reject_reason = Some(RejectReason::LpRejected);
            order.message = message;
        }
    }
}
