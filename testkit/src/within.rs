//! The next item of any stream (a Momento SDK subscription, say) within a
//! deadline.
//!
//! This file uses only std, `tokio` and `futures-util`: the transport
//! crate's own tests compile it too (`transport/tests/support`), since
//! fxcast-transport sits below everything this crate depends on.

use std::time::Duration;

use futures_util::{Stream, StreamExt};

/// The next item of `stream` within `within`; panics with `late` when none
/// comes in time, and when the stream ends.
pub async fn next_within<S: Stream + Unpin>(
    stream: &mut S,
    within: Duration,
    late: &str,
) -> S::Item {
    tokio::time::timeout(within, stream.next())
        .await
        .expect(late)
        .expect("the stream ended")
}
