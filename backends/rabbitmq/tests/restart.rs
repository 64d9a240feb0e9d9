//! Scenario 15: the broker restarts twice during a stream of 10,000 events
//! and every confirmed event is handled. Restarts the shared broker with the
//! command in `BUSLINE_TEST_AMQP_RESTART` (skipped, saying so, when unset),
//! so run this binary alone: `cargo nextest run -p busline-rabbitmq --test restart`.

mod common;

busline_testkit::broker_restart_suite!(common::RabbitFixture::new().await);
