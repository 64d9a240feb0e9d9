//! busline-nats (in progress).
