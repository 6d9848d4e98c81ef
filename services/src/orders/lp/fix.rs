//! `--lp fix`: orders dealt by an LP over FIX 4.4, on the session shared
//! with `--feed fix`.
//!
//! [`execute`](LiquidityProvider::execute) sends one NewOrderSingle (D):
//! ClOrdID = [`LpOrder::key`], a limit order at the price the order passed
//! the price check at, TimeInForce FOK (fill completely at that price or
//! better, or not at all). The ExecutionReport (8) for that ClOrdID
//! decides: OrdStatus Filled -> [`LpOutcome::Filled`] at LastPx (AvgPx
//! when LastPx is missing), Rejected/Canceled/Expired ->
//! [`LpOutcome::Rejected`] with the LP's Text (58) - but Canceled/Expired
//! with CumQty (14) > 0 dealt money: [`LpError`], the order stays PENDING
//! (logged as an error). A session-level Reject
//! (3) or a BusinessMessageReject (j) of the D means the LP refused the
//! message: nothing was dealt, Rejected with its text.
//!
//! No report within the timeout, a lost session, a failed write or a send
//! the session does not complete within the timeout: the
//! outcome is unknown, [`LpError`], and the order stays PENDING. The
//! executor then calls [`recover`](LiquidityProvider::recover), which
//! waits for the session and asks with OrderStatusRequest (H). The LP's
//! answer is final: filled, rejected, or - an ExecutionReport with OrdStatus
//! Rejected for a ClOrdID it does not know - never received, so Rejected.
//! A NewOrderSingle is never sent twice for one ClOrdID: a key this process
//! already sent is recovered, not re-sent (a key is forgotten once its
//! outcome is final), and after a restart the executor only recovers
//! PENDING orders.

use std::{
    collections::HashSet,
    str::FromStr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use fxcast_fix::{FixError, FixSession, Message, SessionEvent, SymbolMap, tag, utc_timestamp};
use fxcast_transport::BoxFuture;
use rust_decimal::Decimal;
use tokio::{
    sync::broadcast::{self, error::RecvError},
    time::Instant,
};

use super::{LiquidityProvider, LpError, LpOrder, LpOutcome};
use crate::orders::model::Side;

/// Settings of [`FixLp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixLpConfig {
    /// The FIX session (shared with `--feed fix`).
    pub session: FixSession,
    /// fxcast symbol -> LP symbol.
    pub symbols: SymbolMap,
    /// Longest wait for an ExecutionReport (and for the session to be
    /// logged on before sending).
    pub timeout: Duration,
}

/// A liquidity provider reached over FIX.
#[derive(Debug)]
pub struct FixLp {
    config: FixLpConfig,
    /// ClOrdIDs sent as NewOrderSingle by this process: never twice.
    sent: Mutex<HashSet<String>>,
    status_requests: AtomicU64,
}

/// Which request a report answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    NewOrder,
    Status,
}

impl FixLp {
    /// The adapter; starts the session if it is not running yet.
    ///
    /// # Errors
    /// [`crate::Error::Config`] when the session cannot start (its
    /// sequence numbers cannot be read).
    pub fn new(config: FixLpConfig) -> Result<Self, crate::Error> {
        config
            .session
            .start()
            .map_err(|e| crate::Error::Config(e.to_string()))?;
        Ok(Self {
            config,
            sent: Mutex::default(),
            status_requests: AtomicU64::new(0),
        })
    }

    fn error(&self, message: impl Into<String>) -> LpError {
        LpError {
            provider: "fix".into(),
            message: message.into(),
        }
    }

    fn side(side: Side) -> &'static str {
        match side {
            Side::Buy => "1",
            Side::Sell => "2",
        }
    }

    fn new_order_single(&self, order: &LpOrder) -> Message {
        Message::new("D")
            .with(tag::CL_ORD_ID, &order.key)
            .with(tag::SYMBOL, self.config.symbols.to_lp(&order.symbol))
            .with(tag::SIDE, Self::side(order.side))
            .with(tag::TRANSACT_TIME, utc_timestamp(SystemTime::now()))
            .with(tag::ORDER_QTY, order.quantity)
            .with(tag::ORD_TYPE, 2)
            .with(tag::PRICE, order.price)
            .with(tag::TIME_IN_FORCE, 4)
    }

    fn order_status_request(&self, order: &LpOrder) -> Message {
        let n = self.status_requests.fetch_add(1, Ordering::Relaxed) + 1;
        Message::new("H")
            .with(tag::CL_ORD_ID, &order.key)
            .with(tag::ORD_STATUS_REQ_ID, format!("{}-{n}", order.order_id))
            .with(tag::SYMBOL, self.config.symbols.to_lp(&order.symbol))
            .with(tag::SIDE, Self::side(order.side))
    }

    /// Sends `order`'s NewOrderSingle or OrderStatusRequest and waits for
    /// the report that answers it; the order is settled once answered.
    async fn ask(&self, order: &LpOrder, asked: Asked) -> Result<LpOutcome, LpError> {
        // Subscribed before sending, so the answer cannot slip past.
        let mut events = self.config.session.subscribe();
        let seq = match asked {
            Asked::NewOrder => {
                let seq = self.send(self.new_order_single(order)).await?;
                tracing::debug!(key = %order.key, seq, "NewOrderSingle sent");
                seq
            }
            Asked::Status => {
                let seq = self.send(self.order_status_request(order)).await?;
                tracing::info!(key = %order.key, seq, "OrderStatusRequest sent");
                seq
            }
        };
        let outcome = self.answer(&mut events, &order.key, seq, asked).await?;
        self.settled(&order.key);
        Ok(outcome)
    }

    /// Sends `message` once logged on; its MsgSeqNum.
    async fn send(&self, message: Message) -> Result<u64, LpError> {
        let session = &self.config.session;
        if !session.wait_logged_on(self.config.timeout).await {
            let why = session.status().borrow().last_error.clone();
            return Err(self.error(format!(
                "the FIX session is not logged on{}",
                why.map(|w| format!(" ({w})")).unwrap_or_default()
            )));
        }
        // A session that cannot write (an LP that stopped reading) must not
        // hold the order: after the timeout its outcome is unknown (the
        // message may or may not be out), so PENDING and recovered.
        match tokio::time::timeout(self.config.timeout, session.send(message)).await {
            Ok(sent) => sent.map_err(|err| match err {
                FixError::NotLoggedOn => self.error("the FIX session logged out before sending"),
                other => self.error(other.to_string()),
            }),
            Err(_) => Err(self.error(format!(
                "the FIX session did not send within {}s; the outcome is unknown",
                self.config.timeout.as_secs_f32()
            ))),
        }
    }

    /// Waits for the answer to the request `seq` about `key`.
    async fn answer(
        &self,
        events: &mut broadcast::Receiver<SessionEvent>,
        key: &str,
        seq: u64,
        asked: Asked,
    ) -> Result<LpOutcome, LpError> {
        let deadline = Instant::now() + self.config.timeout;
        loop {
            let event = match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => {
                    return Err(self.error(format!(
                        "no ExecutionReport for {key} within {}s",
                        self.config.timeout.as_secs_f32()
                    )));
                }
                Ok(Ok(event)) => event,
                Ok(Err(RecvError::Lagged(_))) => continue,
                Ok(Err(RecvError::Closed)) => return Err(self.error("the FIX session stopped")),
            };
            let message =
                match event {
                    SessionEvent::Message(message) => message,
                    SessionEvent::LoggedOut { reason } => {
                        return Err(self.error(format!(
                            "the FIX session ended before the answer for {key}: {reason}"
                        )));
                    }
                    SessionEvent::Reject(reject) if reject.ref_seq_num == Some(seq) => {
                        return match asked {
                            Asked::NewOrder => Ok(LpOutcome::Rejected {
                                message: format!("the LP refused the order: {reject}"),
                            }),
                            Asked::Status => Err(self
                                .error(format!("the LP refused the OrderStatusRequest: {reject}"))),
                        };
                    }
                    SessionEvent::Reject(_) | SessionEvent::LoggedOn => continue,
                };
            match message.msg_type() {
                "8" if message.get(tag::CL_ORD_ID) == Some(key) => {
                    if let Some(outcome) = self.report(&message, asked)? {
                        return Ok(outcome);
                    }
                }
                "j" if message.get(tag::BUSINESS_REJECT_REF_ID) == Some(key)
                    || message.get(tag::REF_SEQ_NUM) == Some(seq.to_string().as_str()) =>
                {
                    let text = message
                        .get(tag::TEXT)
                        .unwrap_or("BusinessMessageReject without a reason");
                    return match asked {
                        Asked::NewOrder => Ok(LpOutcome::Rejected {
                            message: format!("the LP refused the order: {text}"),
                        }),
                        Asked::Status => {
                            Err(self
                                .error(format!("the LP refused the OrderStatusRequest: {text}")))
                        }
                    };
                }
                _ => {}
            }
        }
    }

    /// The outcome an ExecutionReport states; `None` while the order is
    /// still working (New, PendingNew).
    fn report(&self, message: &Message, asked: Asked) -> Result<Option<LpOutcome>, LpError> {
        let status = message.get(tag::ORD_STATUS).unwrap_or("");
        let text = message.get(tag::TEXT);
        let price = |t: u32| {
            message
                .get(t)
                .and_then(|p| Decimal::from_str(p).ok())
                .filter(|p| *p > Decimal::ZERO)
        };
        Ok(Some(match status {
            "2" => {
                let Some(price) = price(tag::LAST_PX).or_else(|| price(tag::AVG_PX)) else {
                    return Err(self.error("an ExecutionReport of a fill without LastPx or AvgPx"));
                };
                LpOutcome::Filled {
                    price,
                    execution_id: message.get(tag::EXEC_ID).unwrap_or("").to_owned(),
                }
            }
            "8" => LpOutcome::Rejected {
                message: match (text, asked) {
                    (Some(text), _) => format!("rejected by the LP: {text}"),
                    (None, Asked::Status) => {
                        "the LP has no such order: it never received it".to_owned()
                    }
                    (None, Asked::NewOrder) => format!(
                        "rejected by the LP (OrdRejReason {})",
                        message.get(tag::ORD_REJ_REASON).unwrap_or("none")
                    ),
                },
            },
            "4" | "C" if !Self::nothing_dealt(message) => {
                let what = if status == "4" { "canceled" } else { "expired" };
                tracing::error!(
                    key = message.get(tag::CL_ORD_ID).unwrap_or(""),
                    status,
                    cum_qty = message.get(tag::CUM_QTY).unwrap_or(""),
                    "the LP {what} an order after dealing part of it: left PENDING for a person"
                );
                return Err(self.error(format!(
                    "the LP {what} the order but reports CumQty {} dealt; not settled",
                    message.get(tag::CUM_QTY).unwrap_or("")
                )));
            }
            "4" | "C" => LpOutcome::Rejected {
                message: format!(
                    "not filled: the LP {} the order{}",
                    if status == "4" { "canceled" } else { "expired" },
                    text.map(|t| format!(": {t}")).unwrap_or_default()
                ),
            },
            "1" => {
                return Err(self
                    .error("the LP reports a partial fill of a fill-or-kill order; not settled"));
            }
            _ if asked == Asked::Status => {
                return Err(self.error(format!(
                    "the LP reports the order as still working (OrdStatus {status})"
                )));
            }
            _ => return Ok(None),
        }))
    }
}

impl FixLp {
    /// Whether an ExecutionReport says nothing was dealt: CumQty (14)
    /// missing or zero (an unreadable one is no proof).
    fn nothing_dealt(message: &Message) -> bool {
        message
            .get(tag::CUM_QTY)
            .is_none_or(|q| Decimal::from_str(q).is_ok_and(|q| q.is_zero()))
    }

    /// The key's outcome is final: it no longer needs guarding against a
    /// second NewOrderSingle in this process (the executor does not
    /// execute a settled order again).
    fn settled(&self, key: &str) {
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

impl LiquidityProvider for FixLp {
    fn name(&self) -> &str {
        "fix"
    }

    fn execute<'a>(&'a self, order: &'a LpOrder) -> BoxFuture<'a, Result<LpOutcome, LpError>> {
        Box::pin(async move {
            let first = self
                .sent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(order.key.clone());
            if !first {
                // Sent before: ask, never send a second NewOrderSingle.
                return self.recover(order).await;
            }
            self.ask(order, Asked::NewOrder).await
        })
    }

    fn recover<'a>(&'a self, order: &'a LpOrder) -> BoxFuture<'a, Result<LpOutcome, LpError>> {
        Box::pin(async move {
            let outcome = self.ask(order, Asked::Status).await?;
            tracing::info!(key = %order.key, ?outcome, "the LP confirmed an order's outcome");
            Ok(outcome)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp() -> FixLp {
        let dir = std::env::temp_dir();
        let session = FixSession::new(fxcast_fix::SessionConfig::new(
            "127.0.0.1",
            1,
            "FXCAST",
            "LP",
            dir,
        ))
        .unwrap();
        FixLp {
            config: FixLpConfig {
                session,
                symbols: SymbolMap::new([("USD_JPY".into(), "USD/JPY".into())]).unwrap(),
                timeout: Duration::from_secs(1),
            },
            sent: Mutex::default(),
            status_requests: AtomicU64::new(0),
        }
    }

    fn order() -> LpOrder {
        LpOrder {
            key: "alice/c1".into(),
            order_id: "O1".into(),
            symbol: "USD_JPY".into(),
            side: Side::Sell,
            quantity: Decimal::from(1000),
            price: "151.234".parse().unwrap(),
        }
    }

    #[test]
    fn the_order_is_a_limit_fok_at_the_checked_price_keyed_by_the_lp_key() {
        let d = lp().new_order_single(&order());
        assert_eq!(d.get(11), Some("alice/c1"));
        assert_eq!(d.get(55), Some("USD/JPY"));
        assert_eq!(d.get(54), Some("2"));
        assert_eq!(d.get(38), Some("1000"));
        assert_eq!(
            (d.get(40), d.get(44), d.get(59)),
            (Some("2"), Some("151.234"), Some("4"))
        );
        let h = lp().order_status_request(&order());
        assert_eq!((h.get(11), h.get(55)), (Some("alice/c1"), Some("USD/JPY")));
    }

    #[test]
    fn execution_reports_map_to_outcomes() {
        let lp = lp();
        let er = |status: &str| Message::new("8").with(11, "alice/c1").with(39, status);
        let filled = er("2").with(17, "E1").with(31, "151.230").with(6, "151.2");
        assert_eq!(
            lp.report(&filled, Asked::NewOrder).unwrap(),
            Some(LpOutcome::Filled {
                price: "151.230".parse().unwrap(),
                execution_id: "E1".into()
            })
        );
        let rejected = er("8").with(58, "last look");
        assert!(matches!(
            lp.report(&rejected, Asked::NewOrder).unwrap(),
            Some(LpOutcome::Rejected { message }) if message.contains("last look")
        ));
        assert!(lp.report(&er("0"), Asked::NewOrder).unwrap().is_none());
        assert!(lp.report(&er("0"), Asked::Status).is_err());
        assert!(
            lp.report(&er("2"), Asked::NewOrder).is_err(),
            "a fill needs a price"
        );
        assert!(matches!(
            lp.report(&er("8"), Asked::Status).unwrap(),
            Some(LpOutcome::Rejected { message }) if message.contains("never received")
        ));
        assert!(matches!(
            lp.report(&er("4"), Asked::NewOrder).unwrap(),
            Some(LpOutcome::Rejected { .. })
        ));
        assert!(matches!(
            lp.report(&er("C").with(14, "0"), Asked::Status).unwrap(),
            Some(LpOutcome::Rejected { .. })
        ));
    }

    #[test]
    fn cancelled_or_expired_after_a_deal_is_not_a_rejection() {
        let lp = lp();
        let er = |status: &str| Message::new("8").with(11, "alice/c1").with(39, status);
        for status in ["4", "C"] {
            assert!(
                lp.report(&er(status).with(14, "500"), Asked::NewOrder)
                    .is_err()
            );
            assert!(
                lp.report(&er(status).with(14, "500"), Asked::Status)
                    .is_err()
            );
            assert!(lp.report(&er(status).with(14, "x"), Asked::Status).is_err());
        }
    }

    #[test]
    fn a_settled_key_is_forgotten() {
        let lp = lp();
        lp.sent.lock().unwrap().insert("alice/c1".into());
        lp.settled("alice/c1");
        assert!(lp.sent.lock().unwrap().is_empty());
    }
}
