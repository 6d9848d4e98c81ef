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
/// among the channel's receivers.
pub(crate) struct LocalReader<T> {
    inner: BroadcastStream<T>,
    message: fn(T) -> Delivery,
    leave: Option<Box<dyn FnOnce() + Send>>,
}

impl<T: Clone + Send + 'static> LocalReader<T> {
    /// Reads `receiver`, each item made a delivery by `message`.
    pub(crate) fn new(
        receiver: broadcast::Receiver<T>,
        message: fn(T) -> Delivery,
        leave: impl FnOnce() + Send + 'static,
    ) -> Self {
        Self {
            inner: BroadcastStream::new(receiver),
            message,
            leave: Some(Box::new(leave)),
        }
    }
}

impl<T: Clone + Send + 'static> Stream for LocalReader<T> {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let message = self.message;
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|result| match result {
                Ok(item) => message(item),
                Err(BroadcastStreamRecvError::Lagged(n)) => Delivery::Gap(Gap {
                    missed: Some(n),
                    cause: GapCause::Lagged,
                }),
            })
        })
    }
}

impl<T> Drop for LocalReader<T> {
    fn drop(&mut self) {
        if let Some(leave) = self.leave.take() {
            leave();
        }
    }
}
