//! `--feed replay:<FILE>`: a recorded bitFlyer session played back.
//!
//! Each record of the file (see [`record`](super::record_bitflyer)) is
//! decoded exactly as the live feed decodes a notification, so a replay
//! publishes the same prices as the session it recorded. Records are paced
//! by their receive timestamps, divided by the speed (`1` is real time, `10`
//! ten times faster, `max` as fast as the publisher takes them), and with
//! `--loop` the file starts over at its end.

use std::{
    borrow::Cow,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, SystemTime},
};

use rust_decimal::{Decimal, prelude::ToPrimitive};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::{
    io::{AsyncBufReadExt, AsyncSeekExt, BufReader},
    sync::mpsc,
    time::Instant,
};

use super::{
    Feed, Quote,
    bitflyer::{TickerDecoder, forward},
    health::{Counter, FeedHealth},
};
use crate::{BoxFuture, Error};

/// How fast a replay runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaySpeed {
    /// Real time multiplied by this factor (`1` real time, `10` ten times
    /// faster, `0.5` half speed).
    Factor(Decimal),
    /// No pacing: every record as soon as the publisher takes it.
    Max,
}

impl Default for ReplaySpeed {
    fn default() -> Self {
        Self::Factor(Decimal::ONE)
    }
}

impl fmt::Display for ReplaySpeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Factor(factor) => write!(f, "{factor}"),
            Self::Max => f.write_str("max"),
        }
    }
}

/// A replay speed that is neither `max` nor a positive number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid replay speed {0:?}: use 1 (real time), a factor such as 10 or 0.5, or max")]
pub struct ParseReplaySpeedError(String);

impl FromStr for ReplaySpeed {
    type Err = ParseReplaySpeedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("max") {
            return Ok(Self::Max);
        }
        let factor = s
            .strip_suffix(['x', 'X'])
            .unwrap_or(s)
            .parse::<Decimal>()
            .ok()
            .filter(|f| *f > Decimal::ZERO)
            .ok_or_else(|| ParseReplaySpeedError(s.to_owned()))?;
        Ok(Self::Factor(factor))
    }
}

impl ReplaySpeed {
    /// When a record `offset` after the first is due, after the pass began;
    /// `None` for [`ReplaySpeed::Max`].
    fn due(&self, offset: Duration) -> Option<Duration> {
        let Self::Factor(factor) = self else {
            return None;
        };
        let nanos = Decimal::from(u64::try_from(offset.as_nanos()).unwrap_or(u64::MAX));
        let scaled = (nanos / factor).trunc().to_u64().unwrap_or(u64::MAX);
        Some(Duration::from_nanos(scaled))
    }
}

/// Settings of [`ReplayFeed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayConfig {
    /// The recording (JSON Lines, as written by `fxcast record`).
    pub path: PathBuf,
    /// Pacing.
    pub speed: ReplaySpeed,
    /// Start over at the end of the file, forever.
    pub looped: bool,
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    received_at: Cow<'a, str>,
    #[serde(borrow)]
    message: &'a RawValue,
}

/// Plays a recording back as a feed (source `"replay"`).
pub struct ReplayFeed {
    config: ReplayConfig,
    file: std::fs::File,
    decoder: TickerDecoder,
    health: FeedHealth,
}

impl fmt::Debug for ReplayFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayFeed")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ReplayFeed {
    /// Opens the recording, replaying the ticks of `products` (ticks of other
    /// products are skipped and counted as ignored).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be opened.
    pub fn open<'a>(
        config: ReplayConfig,
        products: impl IntoIterator<Item = &'a str>,
        health: FeedHealth,
    ) -> Result<Self, Error> {
        let file = std::fs::File::open(&config.path).map_err(|source| Error::Io {
            context: format!("cannot open replay file {}", config.path.display()),
            source,
        })?;
        Ok(Self {
            decoder: TickerDecoder::new(products),
            config,
            file,
            health,
        })
    }

    fn io_error(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            context: format!("cannot read replay file {}", path.display()),
            source,
        }
    }

    /// One pass over the file. Returns the number of quotes sent, or `None`
    /// once `out` is closed.
    async fn pass(
        &self,
        reader: &mut BufReader<tokio::fs::File>,
        out: &mpsc::Sender<Quote>,
    ) -> Result<Option<u64>, Error> {
        let path = &self.config.path;
        let started = Instant::now();
        let mut first: Option<SystemTime> = None;
        let mut sent = 0u64;
        let mut line = String::new();
        for number in 1u64.. {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .await
                .map_err(|e| Self::io_error(path, e))?;
            if read == 0 {
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            let record = serde_json::from_str::<Record<'_>>(&line)
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    humantime::parse_rfc3339(&r.received_at)
                        .map(|at| (at, r.message))
                        .map_err(|e| format!("received_at {:?}: {e}", r.received_at))
                });
            let (received_at, message) = match record {
                Ok(record) => record,
                Err(err) => {
                    self.health.count(Counter::Malformed);
                    tracing::warn!(file = %path.display(), line = number, error = %err, "skipping a malformed replay record");
                    continue;
                }
            };
            let first = *first.get_or_insert(received_at);
            let offset = received_at.duration_since(first).unwrap_or_default();
            if let Some(due) = self.config.speed.due(offset) {
                tokio::time::sleep_until(started + due).await;
            }
            self.health.count(Counter::Notification);
            let decoded = self.decoder.decode_frame(message.get());
            let is_quote = matches!(decoded, Ok(super::bitflyer::Decoded::Quote(_)));
            if !forward(decoded, &self.health, out).await {
                return Ok(None);
            }
            sent += u64::from(is_quote);
        }
        Ok(Some(sent))
    }
}

impl Feed for ReplayFeed {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn run(self: Box<Self>, out: mpsc::Sender<Quote>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let path = self.config.path.clone();
            let file = self
                .file
                .try_clone()
                .map_err(|e| Self::io_error(&path, e))?;
            let mut reader = BufReader::new(tokio::fs::File::from_std(file));
            let mut passes = 0u64;
            loop {
                let Some(sent) = self.pass(&mut reader, &out).await? else {
                    return Ok(());
                };
                passes += 1;
                tracing::info!(file = %path.display(), pass = passes, quotes = sent, "replay pass finished");
                if !self.config.looped {
                    return Ok(());
                }
                if sent == 0 {
                    return Err(Error::Config(format!(
                        "replay file {} has no ticks of the configured symbols to loop over",
                        path.display()
                    )));
                }
                reader
                    .seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(|e| Self::io_error(&path, e))?;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_parse_and_scale_offsets() {
        let speed = |s: &str| s.parse::<ReplaySpeed>().unwrap();
        assert_eq!(speed("max"), ReplaySpeed::Max);
        assert_eq!(speed("MAX"), ReplaySpeed::Max);
        assert_eq!(speed("1"), ReplaySpeed::default());
        assert_eq!(speed("10x").to_string(), "10");
        let second = Duration::from_secs(1);
        assert_eq!(speed("1").due(second), Some(second));
        assert_eq!(speed("10").due(second), Some(Duration::from_millis(100)));
        assert_eq!(speed("0.5").due(second), Some(Duration::from_secs(2)));
        assert_eq!(
            speed("3").due(Duration::from_nanos(10)),
            Some(Duration::from_nanos(3))
        );
        assert_eq!(speed("max").due(second), None);
        for bad in ["0", "-1", "fast", "", "x", "0x"] {
            let err = bad.parse::<ReplaySpeed>().unwrap_err();
            assert!(
                err.to_string().contains("invalid replay speed"),
                "{bad}: {err}"
            );
        }
    }
}
