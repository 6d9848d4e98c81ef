//! A subscriber's end of an in-process broadcast, as backends hand it out.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use crate::{Delivery, Gap, GapCause};

/// A broadcast receiver as a stream of deliveries: a receiver that falls
/// behind is told how many messages it missed (a [`GapCause::Lagged`]
/// gap). `leave` runs when it is dropped, while this receiver still counts
/// among the channel's receivers. Both closures are type parameters, so a
/// backend's reader is as direct as a hand-written one on the delivery path.
pub(crate) struct LocalReader<T, M, L: FnOnce()> {
    inner: BroadcastStream<T>,
    message: M,
    leave: Option<L>,
}

impl<T, M, L> LocalReader<T, M, L>
where
    T: Clone + Send + 'static,
    M: Fn(T) -> Delivery,
    L: FnOnce(),
{
    /// Reads `receiver`, each item made a delivery by `message`.
    pub(crate) fn new(receiver: broadcast::Receiver<T>, message: M, leave: L) -> Self {
        Self {
            inner: BroadcastStream::new(receiver),
            message,
            leave: Some(leave),
        }
    }
}

impl<T, M, L> Stream for LocalReader<T, M, L>
where
    T: Clone + Send + 'static,
    M: Fn(T) -> Delivery + Unpin,
    L: FnOnce() + Unpin,
{
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = &mut *self;
        Pin::new(&mut this.inner).poll_next(cx).map(|item| {
            item.map(|result| match result {
                Ok(item) => (this.message)(item),
                Err(BroadcastStreamRecvError::Lagged(n)) => Delivery::Gap(Gap {
                    missed: Some(n),
                    cause: GapCause::Lagged,
                }),
            })
        })
    }
}

impl<T, M, L: FnOnce()> Drop for LocalReader<T, M, L> {
    fn drop(&mut self) {
        if let Some(leave) = self.leave.take() {
            leave();
        }
    }
}
