//! The real `busline` binary against the real brokers: what an operator
//! runs at 3 a.m., run here as a process with its exit code and output.
//!
//! Every test uses its own topic and group, so they run in parallel on the
//! shared brokers.

mod cli;
mod flows;
mod foreign;

mod memory {
    use crate::cli::{closed_port, Cli};

    #[tokio::test]
    async fn doctor_is_green() {
        let out = Cli::new("memory://").run(&["doctor"]).await;
        out.assert_code(0);
        assert!(out.stdout.contains("all checks passed"), "{out}");
        assert!(
            out.stdout.contains("ok    clean up"),
            "the memory bus removes groups: {out}"
        );
    }

    #[tokio::test]
    async fn an_empty_dlq_lists_as_empty() {
        let out = Cli::new("memory://")
            .run(&["dlq", "list", "orders", "billing", "--idle", "100ms"])
            .await;
        out.assert_code(0);
        assert!(
            out.stdout.contains("no dead letters in orders.billing.dlq"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_fresh_memory_bus_lists_nothing() {
        // The memory bus lives in the process: a new one holds nothing.
        let topics = Cli::new("memory://").run(&["topics"]).await;
        topics.assert_code(0);
        assert_eq!(topics.stdout.trim(), "no topics", "{topics}");
        let groups = Cli::new("memory://").run(&["groups", "orders"]).await;
        groups.assert_code(4);
        assert!(groups.stderr.contains("no such topic"), "{groups}");
    }

    #[tokio::test]
    async fn tail_that_sees_fewer_than_count_exits_4() {
        let out = Cli::new("memory://")
            .run(&["tail", "orders", "--count", "1", "--timeout", "200ms"])
            .await;
        out.assert_code(4);
    }

    #[tokio::test]
    async fn usage_errors_exit_2_and_bad_urls_exit_3() {
        let out = Cli::new("memory://")
            .run(&["dlq", "replay", "orders", "billing"])
            .await;
        out.assert_code(2);
        assert!(out.stderr.contains("--id"), "names the missing selection: {out}");
        let out = Cli::new("memory://")
            .run(&["publish", "orders", "--type", "t", "--data", "{nope"])
            .await;
        out.assert_code(2);
        let out = Cli::new("smtp://127.0.0.1").run(&["doctor"]).await;
        out.assert_code(3);
        let out = Cli::new(&format!("nats://127.0.0.1:{}", closed_port()))
            .run(&["publish", "t", "--type", "x"])
            .await;
        out.assert_code(3);
    }

    #[tokio::test]
    async fn secrets_in_the_url_are_never_printed() {
        let url = format!("amqp://ops:s3cret-pw@127.0.0.1:{}/%2f", closed_port());
        let out = Cli::new(&url).run(&["doctor"]).await;
        out.assert_code(3);
        assert!(
            !out.stdout.contains("s3cret-pw") && !out.stderr.contains("s3cret-pw"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn completions_print_a_script() {
        let out = Cli::new("memory://").run(&["completions", "bash"]).await;
        out.assert_code(0);
        assert!(out.stdout.contains("_busline()"), "{out}");
    }
}

/// The flows on one broker: `$from` is where tail starts, `$removes`
/// whether the doctor can clean its group up, `$closed` the URL of a closed
/// port with `{}` for the port, `$bytes_headers` whether the broker's own
/// client writes header values that are not UTF-8 (async-nats takes strings).
macro_rules! broker_flows {
    ($name:ident, $broker:expr, $from:expr, $removes:expr, $closed:expr, $bytes_headers:expr) => {
        mod $name {
            use busline_testkit::brokers::{find, Broker};

            use crate::flows;

            async fn url() -> String {
                let broker: Broker = $broker;
                find(broker).await.unwrap_or_else(|e| panic!("{e}")).url
            }

            #[tokio::test]
            async fn publish_then_tail_sees_it() {
                flows::publish_then_tail_sees_it(&url().await, $from).await;
            }

            #[tokio::test]
            async fn poison_is_listed_shown_and_replayed_by_id() {
                flows::poison_is_listed_shown_and_replayed_by_id(&url().await).await;
            }

            #[tokio::test]
            async fn purge_removes_only_what_it_selects() {
                flows::purge_removes_only_what_it_selects(&url().await).await;
            }

            #[tokio::test]
            async fn unreadable_letter_is_listed_with_its_headers() {
                flows::unreadable_letter_is_listed_with_its_headers(&url().await, $bytes_headers).await;
            }

            #[tokio::test]
            async fn topics_and_groups_show_the_lag() {
                flows::topics_and_groups_show_the_lag(&url().await).await;
            }

            #[tokio::test]
            async fn doctor_is_green() {
                flows::doctor_is_green(&url().await, $removes).await;
            }

            #[tokio::test]
            async fn doctor_fails_clearly_on_a_closed_port() {
                let url = format!($closed, crate::cli::closed_port());
                flows::doctor_fails_to_connect(&url).await;
            }
        }
    };
}

broker_flows!(
    rabbitmq,
    Broker::RabbitMq,
    "latest",
    true,
    "amqp://guest:guest@127.0.0.1:{}/%2f",
    true
);
broker_flows!(nats, Broker::Nats, "latest", true, "nats://127.0.0.1:{}", false);
// From the earliest offset: a new Kafka group resolves "latest" when its
// partitions are assigned, which can be after the publish.
broker_flows!(
    kafka,
    Broker::Kafka,
    "earliest",
    true,
    "kafka://127.0.0.1:{}",
    true
);
