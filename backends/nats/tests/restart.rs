//! Scenario 15: the server restarts twice during a stream of 10,000 events
//! and every confirmed event is handled. It needs a server this test may
//! restart: `BUSLINE_TEST_NATS_RESTART` holds the command (for example
//! `bash /abs/path/.ci/nats-restartable.sh restart`) and
//! `BUSLINE_TEST_NATS_RESTART_URL` its URL (default nats://127.0.0.1:4223).
//! Without the command the scenario is skipped, saying why.

mod common;

use common::NatsFixture;

busline_testkit::broker_restart_suite!(NatsFixture::restartable());
