//! `--feed fix`: an LP's prices over the FIX session it shares with the
//! FIX LP adapter.
//!
//! At every logon (a new FIX session on a new connection) one
//! MarketDataRequest (V) per symbol asks for snapshot + updates of the top
//! of book (MarketDepth 1, bid and offer, incremental updates). Snapshots
//! (W) replace a symbol's book; incremental refreshes (X) change, add or
//! delete its entries. Every message that leaves a symbol with both a bid
//! and an ask below it becomes a [`Quote`], prices parsed exactly as
//! decimals. A MarketDataRequestReject (Y) marks the symbol down with the
//! LP's reason in [`FeedHealth`]; with no quotes it goes stale like any
//! silent symbol. A logout stops the quotes, so every symbol goes stale
//! after `--stale-after`; the next logon subscribes again.
//!
//! Market data resent by the LP (PossDupFlag=Y, after a ResendRequest) is
//! old: it is skipped, never published as a live price. A skipped update
//! (or market data this feed fell behind on) leaves the book incomplete, so
//! the symbols it concerns (all of them after falling behind) lose their
//! book - nothing is quoted until both sides are known again - and are
//! requested anew: the old MarketDataRequest cancelled (263=2), a new one
//! sent for a fresh snapshot.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    str::FromStr,
    sync::Arc,
    time::SystemTime,
};

use fxcast_fix::{FixSession, Message, SessionEvent, SymbolMap, tag};
use rust_decimal::Decimal;
use tokio::sync::{broadcast::error::RecvError, mpsc};

use super::{
    Feed, Quote,
    health::{Counter, FeedHealth},
};
use crate::{BoxFuture, Error};

/// Settings of `--feed fix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixFeedConfig {
    /// The FIX session (shared with `--lp fix`).
    pub session: FixSession,
    /// fxcast symbol -> LP symbol.
    pub symbols: SymbolMap,
}

/// Top of book of one symbol.
#[derive(Debug, Default, Clone, Copy)]
struct Book {
    bid: Option<Decimal>,
    ask: Option<Decimal>,
}

/// The LP's prices as quotes.
#[derive(Debug)]
pub struct FixFeed {
    config: FixFeedConfig,
    symbols: Vec<String>,
    health: FeedHealth,
}

impl FixFeed {
    /// A feed of `symbols` (fxcast names), reporting into `health`.
    ///
    /// # Errors
    /// [`Error::Config`] without symbols.
    pub fn new<'a>(
        config: FixFeedConfig,
        symbols: impl IntoIterator<Item = &'a str>,
        health: FeedHealth,
    ) -> Result<Self, Error> {
        let symbols: Vec<String> = symbols.into_iter().map(str::to_owned).collect();
        if symbols.is_empty() {
            return Err(Error::Config("--feed fix needs at least one symbol".into()));
        }
        Ok(Self {
            config,
            symbols,
            health,
        })
    }
}

/// One MarketDataRequest: snapshot + updates of the top of book.
fn market_data_request(request_id: &str, lp_symbol: &str) -> Message {
    market_data_request_of(1, request_id, lp_symbol)
}

/// The MarketDataRequest cancelling the subscription `request_id`.
fn market_data_unsubscribe(request_id: &str, lp_symbol: &str) -> Message {
    market_data_request_of(2, request_id, lp_symbol)
}

fn market_data_request_of(kind: u8, request_id: &str, lp_symbol: &str) -> Message {
    Message::new("V")
        .with(tag::MD_REQ_ID, request_id)
        .with(tag::SUBSCRIPTION_REQUEST_TYPE, kind)
        .with(tag::MARKET_DEPTH, 1)
        .with(tag::MD_UPDATE_TYPE, 1)
        .with(tag::NO_MD_ENTRY_TYPES, 2)
        .with(tag::MD_ENTRY_TYPE, 0)
        .with(tag::MD_ENTRY_TYPE, 1)
        .with(tag::NO_RELATED_SYM, 1)
        .with(tag::SYMBOL, lp_symbol)
}

/// A change to one side of a book: `None` no change, `Some(None)` the
/// entry is deleted, `Some(Some(price))` it is set.
type SideChange = Option<Option<Decimal>>;

/// What one market-data message says, per LP symbol: the entries it sets
/// (`Some(price)`) or deletes (`None`), bid first.
#[derive(Debug, Default, PartialEq, Eq)]
struct Update {
    /// Snapshot (W): the book is replaced, not changed.
    snapshot: bool,
    /// LP symbol -> (bid change, ask change); an outer `None` is no change.
    changes: BTreeMap<String, (SideChange, SideChange)>,
}

/// Reads a W or X message's entries.
fn parse_update(message: &Message) -> Result<Update, String> {
    let snapshot = message.msg_type() == "W";
    let top_symbol = message.get(tag::SYMBOL).map(str::to_owned);
    let mut update = Update {
        snapshot,
        ..Update::default()
    };
    // An entry: (symbol, action, type, price); a new entry starts at
    // MDUpdateAction (X) or MDEntryType (W).
    #[derive(Default)]
    struct Entry {
        symbol: Option<String>,
        action: Option<String>,
        kind: Option<String>,
        price: Option<String>,
    }
    let starts = if snapshot {
        tag::MD_ENTRY_TYPE
    } else {
        tag::MD_UPDATE_ACTION
    };
    let mut entries: Vec<Entry> = Vec::new();
    let mut in_group = false;
    for (t, v) in message.fields() {
        if *t == tag::NO_MD_ENTRIES {
            in_group = true;
            continue;
        }
        if !in_group {
            continue;
        }
        if *t == starts {
            entries.push(Entry::default());
        }
        let Some(entry) = entries.last_mut() else {
            continue;
        };
        match *t {
            tag::SYMBOL => entry.symbol = Some(v.clone()),
            tag::MD_UPDATE_ACTION => entry.action = Some(v.clone()),
            tag::MD_ENTRY_TYPE => entry.kind = Some(v.clone()),
            tag::MD_ENTRY_PX => entry.price = Some(v.clone()),
            _ => {}
        }
    }
    for entry in entries {
        let symbol = entry
            .symbol
            .or_else(|| top_symbol.clone())
            .ok_or("an MD entry without a Symbol (55)")?;
        let delete = entry.action.as_deref() == Some("2");
        let price = if delete {
            None
        } else {
            let text = entry.price.ok_or("an MD entry without MDEntryPx (270)")?;
            let price = Decimal::from_str(&text)
                .map_err(|_| format!("MDEntryPx {text:?} is not a decimal"))?;
            if price <= Decimal::ZERO {
                return Err(format!("MDEntryPx {text} is not positive"));
            }
            Some(price)
        };
        let change = update.changes.entry(symbol).or_default();
        match entry.kind.as_deref() {
            Some("0") => change.0 = Some(price),
            Some("1") => change.1 = Some(price),
            // Trades, index values and the like: not the book.
            _ => {}
        }
    }
    Ok(update)
}

impl FixFeed {
    /// Subscribes every symbol on the current logon.
    async fn subscribe(&self, logon: u64, requests: &mut HashMap<String, String>) {
        requests.clear();
        for symbol in &self.symbols {
            self.request(format!("fxcast-{logon}-{symbol}"), symbol, requests)
                .await;
        }
        tracing::info!(symbols = requests.len(), "FIX market data requested");
    }

    /// Sends one MarketDataRequest `id` for `symbol`, noted in `requests`.
    async fn request(&self, id: String, symbol: &str, requests: &mut HashMap<String, String>) {
        let lp_symbol = self.config.symbols.to_lp(symbol);
        match self
            .config
            .session
            .send(market_data_request(&id, lp_symbol))
            .await
        {
            Ok(_) => {
                requests.insert(id, symbol.to_owned());
            }
            Err(err) => {
                tracing::warn!(%symbol, error = %err, "cannot send the MarketDataRequest");
            }
        }
    }

    /// Cancels `symbol`'s subscription and asks again (for a new
    /// snapshot of a book that missed updates).
    async fn resubscribe(&self, id: String, symbol: &str, requests: &mut HashMap<String, String>) {
        let old: Vec<String> = requests
            .iter()
            .filter(|(_, s)| s.as_str() == symbol)
            .map(|(id, _)| id.clone())
            .collect();
        let lp_symbol = self.config.symbols.to_lp(symbol);
        for old in old {
            requests.remove(&old);
            if let Err(err) = self
                .config
                .session
                .send(market_data_unsubscribe(&old, lp_symbol))
                .await
            {
                tracing::warn!(%symbol, error = %err, "cannot cancel the MarketDataRequest");
            }
        }
        tracing::info!(%symbol, "FIX market data requested again after missed updates");
        self.request(id, symbol, requests).await;
    }

    /// Drops the books of `symbols` (they missed updates): nothing is
    /// quoted for them until both sides are known again. Returns those not
    /// already waiting for a new snapshot (`resync`), to be requested anew.
    fn drop_books(
        &self,
        symbols: impl IntoIterator<Item = String>,
        books: &mut HashMap<String, Book>,
        resync: &mut HashSet<String>,
    ) -> Vec<String> {
        let mut again = Vec::new();
        for symbol in symbols {
            books.remove(&symbol);
            if resync.insert(symbol.clone()) {
                again.push(symbol);
            }
        }
        again
    }

    /// Applies one W/X; the quotes it completes, and the symbols whose
    /// books it dropped that are to be requested anew.
    fn apply(
        &self,
        message: &Message,
        books: &mut HashMap<String, Book>,
        resync: &mut HashSet<String>,
    ) -> (Vec<Quote>, Vec<String>) {
        if message.poss_dup() {
            self.health.count(Counter::Ignored);
            // The book missed this update: drop the symbols it concerns
            // (all when it cannot be read).
            let concerned: Vec<String> = match parse_update(message) {
                Ok(update) => update
                    .changes
                    .keys()
                    .map(|lp| self.config.symbols.to_fxcast(lp))
                    .filter(|s| self.symbols.iter().any(|served| served == s))
                    .map(str::to_owned)
                    .collect(),
                Err(_) => self.symbols.clone(),
            };
            tracing::debug!(
                symbols = ?concerned,
                "skipping resent (PossDup) market data; those books are dropped"
            );
            return (Vec::new(), self.drop_books(concerned, books, resync));
        }
        let update = match parse_update(message) {
            Ok(update) => update,
            Err(reason) => {
                self.health.count(Counter::Malformed);
                tracing::warn!(%reason, "rejected malformed FIX market data");
                return (Vec::new(), Vec::new());
            }
        };
        let now = SystemTime::now();
        let mut quotes = Vec::new();
        for (lp_symbol, (bid, ask)) in update.changes {
            let symbol = self.config.symbols.to_fxcast(&lp_symbol);
            if !self.symbols.iter().any(|s| s == symbol) {
                self.health.count(Counter::Ignored);
                tracing::debug!(%lp_symbol, "market data for a symbol not served");
                continue;
            }
            let book = books.entry(symbol.to_owned()).or_default();
            if update.snapshot {
                *book = Book::default();
                resync.remove(symbol);
            }
            if let Some(bid) = bid {
                book.bid = bid;
            }
            if let Some(ask) = ask {
                book.ask = ask;
            }
            match (book.bid, book.ask) {
                (Some(bid), Some(ask)) if bid < ask => quotes.push(Quote {
                    symbol: symbol.to_owned(),
                    bid,
                    ask,
                    source_time: now,
                }),
                (Some(bid), Some(ask)) => {
                    self.health.count(Counter::Ignored);
                    tracing::debug!(%symbol, %bid, %ask, "crossed or locked book not published");
                }
                _ => {}
            }
        }
        (quotes, Vec::new())
    }

    /// Applies a snapshot or refresh to the books and sends the quotes it
    /// makes. Returns the symbols whose books it dropped, or `None` once
    /// nobody takes quotes any more.
    async fn forward(
        &self,
        message: &Message,
        books: &mut HashMap<String, Book>,
        resync: &mut HashSet<String>,
        out: &mpsc::Sender<Quote>,
    ) -> Option<Vec<String>> {
        self.health.count(Counter::Notification);
        let (quotes, dropped) = self.apply(message, books, resync);
        for quote in quotes {
            out.send(quote).await.ok()?;
        }
        Some(dropped)
    }

    fn rejected(&self, message: &Message, requests: &HashMap<String, String>) {
        self.health.count(Counter::RpcError);
        let id = message.get(tag::MD_REQ_ID).unwrap_or("");
        let symbol = requests.get(id).map_or("?", String::as_str);
        let reason = match (message.get(tag::TEXT), message.get(tag::MD_REQ_REJ_REASON)) {
            (Some(text), _) => text.to_owned(),
            (None, Some(code)) => format!("MDReqRejReason {code}"),
            (None, None) => "no reason given".to_owned(),
        };
        tracing::warn!(%symbol, %reason, "the LP rejected the market data request");
        if symbol != "?" {
            self.health.mark_down(
                symbol,
                &format!("the LP rejected the market data request: {reason}"),
            );
        }
    }
}

impl Feed for FixFeed {
    fn name(&self) -> &'static str {
        "fix"
    }

    fn run(self: Box<Self>, out: mpsc::Sender<Quote>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let session = self.config.session.clone();
            let mut events = session.subscribe();
            session.start().map_err(|e| Error::Config(e.to_string()))?;
            let mut status = session.status();
            let mut subscribed_logon = 0;
            let mut requests = HashMap::new();
            let mut books: HashMap<String, Book> = HashMap::new();
            // Symbols whose books were dropped, waiting for a new snapshot.
            let mut resync: HashSet<String> = HashSet::new();
            let mut resubscriptions: u64 = 0;
            loop {
                // Subscribe on each new logon (also one that happened before
                // this feed started listening).
                let current = {
                    let s = status.borrow_and_update();
                    s.logged_on.then_some(s.logons)
                };
                if let Some(logon) = current
                    && logon != subscribed_logon
                {
                    subscribed_logon = logon;
                    books.clear();
                    resync.clear();
                    self.health.count(Counter::Connect);
                    self.subscribe(logon, &mut requests).await;
                }
                let event = tokio::select! {
                    changed = status.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                    event = events.recv() => event,
                    () = out.closed() => return Ok(()),
                };
                let mut again = Vec::new();
                let message: Option<Arc<Message>> = match event {
                    Ok(SessionEvent::Message(message)) => Some(message),
                    Ok(SessionEvent::LoggedOut { reason }) => {
                        self.health.count(Counter::Disconnect);
                        tracing::warn!(%reason, "FIX session down: no prices until it is back");
                        continue;
                    }
                    Ok(SessionEvent::LoggedOn | SessionEvent::Reject(_)) => continue,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "the FIX feed fell behind; every book is dropped and requested anew"
                        );
                        again = self.drop_books(self.symbols.clone(), &mut books, &mut resync);
                        None
                    }
                    Err(RecvError::Closed) => return Ok(()),
                };
                if let Some(message) = message {
                    match message.msg_type() {
                        "W" | "X" => {
                            match self.forward(&message, &mut books, &mut resync, &out).await {
                                Some(dropped) => again = dropped,
                                None => return Ok(()),
                            }
                        }
                        "Y" => self.rejected(&message, &requests),
                        _ => {}
                    }
                }
                if subscribed_logon != 0 {
                    for symbol in again {
                        resubscriptions += 1;
                        let id = format!("fxcast-{subscribed_logon}-{symbol}-{resubscriptions}");
                        self.resubscribe(id, &symbol, &mut requests).await;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn snapshots_and_incremental_refreshes_parse_exactly() {
        let w = Message::new("W")
            .with(262, "r")
            .with(55, "USD/JPY")
            .with(268, 2)
            .with(269, 0)
            .with(270, "151.2340")
            .with(271, 1_000_000)
            .with(269, 1)
            .with(270, "151.2360");
        let update = parse_update(&w).unwrap();
        assert!(update.snapshot);
        assert_eq!(
            update.changes["USD/JPY"],
            (Some(Some(d("151.2340"))), Some(Some(d("151.2360"))))
        );
        let x = Message::new("X")
            .with(262, "r")
            .with(268, 3)
            .with(279, 1)
            .with(269, 0)
            .with(55, "USD/JPY")
            .with(270, "151.235")
            .with(279, 2)
            .with(269, 1)
            .with(55, "USD/JPY")
            .with(279, 0)
            .with(269, 1)
            .with(55, "EUR/USD")
            .with(270, "1.08501");
        let update = parse_update(&x).unwrap();
        assert!(!update.snapshot);
        assert_eq!(
            update.changes["USD/JPY"],
            (Some(Some(d("151.235"))), Some(None))
        );
        assert_eq!(update.changes["EUR/USD"], (None, Some(Some(d("1.08501")))));
    }

    #[test]
    fn bad_prices_are_errors_not_panics() {
        for px in ["abc", "-1", "0", "1e400"] {
            let x = Message::new("X")
                .with(268, 1)
                .with(279, 0)
                .with(269, 0)
                .with(55, "A")
                .with(270, px);
            assert!(parse_update(&x).is_err(), "{px}");
        }
        let no_symbol = Message::new("X")
            .with(268, 1)
            .with(279, 0)
            .with(269, 0)
            .with(270, "1");
        assert!(parse_update(&no_symbol).is_err());
    }

    fn feed() -> FixFeed {
        let session = FixSession::new(fxcast_fix::SessionConfig::new(
            "127.0.0.1",
            1,
            "FXCAST",
            "LP",
            std::env::temp_dir(),
        ))
        .unwrap();
        let symbols = ["USD_JPY", "EUR_USD"];
        FixFeed::new(
            FixFeedConfig {
                session,
                symbols: SymbolMap::new([
                    ("USD_JPY".into(), "USD/JPY".into()),
                    ("EUR_USD".into(), "EUR/USD".into()),
                ])
                .unwrap(),
            },
            symbols,
            FeedHealth::new(symbols, std::time::Duration::from_secs(5)),
        )
        .unwrap()
    }

    fn x(symbol: &str, kind: u8, px: &str) -> Message {
        Message::new("X")
            .with(268, 1)
            .with(279, 1)
            .with(269, kind)
            .with(55, symbol)
            .with(270, px)
    }

    #[test]
    fn a_skipped_resent_update_drops_the_book_until_both_sides_are_known_again() {
        let feed = feed();
        let mut books = HashMap::new();
        let mut resync = HashSet::new();
        let w = |symbol: &str, bid: &str, ask: &str| {
            Message::new("W")
                .with(55, symbol)
                .with(268, 2)
                .with(269, 0)
                .with(270, bid)
                .with(269, 1)
                .with(270, ask)
        };
        for symbol in ["USD/JPY", "EUR/USD"] {
            let (quotes, again) = feed.apply(&w(symbol, "1.1", "1.2"), &mut books, &mut resync);
            assert_eq!((quotes.len(), again.len()), (1, 0));
        }
        // A resent ask update is skipped: USD_JPY's book is dropped and
        // requested again (once), EUR_USD untouched.
        let dup = x("USD/JPY", 1, "1.3").with(43, "Y");
        let (quotes, again) = feed.apply(&dup, &mut books, &mut resync);
        assert!(quotes.is_empty());
        assert_eq!(again, ["USD_JPY"]);
        let (_, again) = feed.apply(&dup, &mut books, &mut resync);
        assert!(again.is_empty(), "already requested again");
        // A fresh bid alone quotes nothing (no stale ask with it).
        let (quotes, _) = feed.apply(&x("USD/JPY", 0, "1.15"), &mut books, &mut resync);
        assert!(quotes.is_empty());
        let (quotes, _) = feed.apply(&x("EUR/USD", 0, "1.15"), &mut books, &mut resync);
        assert_eq!(quotes.len(), 1, "other books keep quoting");
        // The ask arrives: both sides fresh, quoted.
        let (quotes, _) = feed.apply(&x("USD/JPY", 1, "1.25"), &mut books, &mut resync);
        assert_eq!((quotes[0].bid, quotes[0].ask), (d("1.15"), d("1.25")));
        // A snapshot ends the wait: a later skip requests again.
        feed.apply(&w("USD/JPY", "1.1", "1.2"), &mut books, &mut resync);
        assert!(resync.is_empty());
        let (_, again) = feed.apply(&dup, &mut books, &mut resync);
        assert_eq!(again, ["USD_JPY"]);
    }

    #[test]
    fn the_unsubscribe_cancels_the_request_id() {
        let v = market_data_unsubscribe("id", "USD/JPY");
        assert_eq!(
            format!("{v:?}"),
            "35=V|262=id|263=2|264=1|265=1|267=2|269=0|269=1|146=1|55=USD/JPY"
        );
    }

    #[test]
    fn the_request_asks_for_top_of_book_bid_and_offer() {
        let v = market_data_request("id", "USD/JPY");
        let text = format!("{v:?}");
        assert_eq!(
            text,
            "35=V|262=id|263=1|264=1|265=1|267=2|269=0|269=1|146=1|55=USD/JPY"
        );
    }
}
