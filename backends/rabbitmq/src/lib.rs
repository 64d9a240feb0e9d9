//! busline-rabbitmq (in progress).
