//! Delayed retries without broker plugins: delay buckets.
//!
//! A retry copy waits in one of its group's bucket queues
//! `<topic>::<group>::retry.<ttl>ms`, whose queue-level `x-message-ttl` is
//! `ttl`, and then dead-letters, through the default exchange, back into
//! the group's queue. The TTLs are `base × 2^k` (`base` =
//! [`RabbitConfig::retry_bucket_base`]); a delay goes into the smallest
//! bucket at least as long, so a retry never comes back sooner than asked
//! and waits less than twice as long (`base` when it asked for less).
//!
//! Every message of a bucket has the same TTL, so its head is always the
//! next to expire: a retry never waits behind a longer one. One queue with
//! per-message TTLs (what busline declared before, `<topic>::<group>::retry`)
//! cannot promise that, since a TTL only expires at the head of the queue.
//! Such a queue left from an older version dead-letters into the group's
//! queue by itself as its messages expire; busline no longer declares or
//! uses it, and it can be deleted once empty.
//!
//! Buckets are declared when first used (once per connection), so a group
//! has only the queues of the delays it asked for.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Channel;

use crate::config::{QueueType, RabbitConfig};

/// The longest bucket TTL: the broker keeps TTLs as 32-bit milliseconds
/// (49.7 days).
const MAX_TTL_MS: u64 = u32::MAX as u64;

/// The longest suffix a bucket adds to its group's retry prefix.
pub(crate) const LONGEST_SUFFIX: usize = ".4294967295ms".len();

/// How this backend delays retries and backs off from failed copies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryTuning {
    /// TTL of the shortest bucket, in milliseconds (at least 1).
    base_ms: u64,
    copy_backoff: Duration,
    copy_backoff_max: Duration,
}

impl RetryTuning {
    pub(crate) fn new(config: &RabbitConfig) -> Self {
        let base_ms = u64::try_from(config.retry_bucket_base.as_millis())
            .unwrap_or(MAX_TTL_MS)
            .clamp(1, MAX_TTL_MS);
        Self {
            base_ms,
            copy_backoff: config.dead_letter_backoff,
            copy_backoff_max: config.dead_letter_backoff_max.max(config.dead_letter_backoff),
        }
    }

    /// The TTL, in milliseconds, of the bucket a retry `delay` (> 0) waits
    /// in: the smallest `base × 2^k` that is at least `delay`, or the
    /// largest below [`MAX_TTL_MS`] for a delay longer than that.
    pub(crate) fn bucket_ttl_ms(&self, delay: Duration) -> u64 {
        let asked = u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        let mut ttl = self.base_ms;
        while ttl < asked && ttl <= MAX_TTL_MS / 2 {
            ttl *= 2;
        }
        ttl
    }

    /// Every bucket TTL [`bucket_ttl_ms`](Self::bucket_ttl_ms) can pick: the
    /// base doubled until the cap, so a group's buckets can be found by name.
    pub(crate) fn bucket_ttls_ms(&self) -> impl Iterator<Item = u64> {
        std::iter::successors(Some(self.base_ms), |ttl| {
            (*ttl <= MAX_TTL_MS / 2).then_some(ttl * 2)
        })
    }

    /// How long a delivery whose copy (dead letter, retry) failed `failures`
    /// times in a row waits before it is handled again: the first backoff
    /// doubled per further failure, at most the longest.
    pub(crate) fn copy_backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.copy_backoff
            .saturating_mul(1 << doublings)
            .min(self.copy_backoff_max)
    }

    /// How long, in all, a delivery is held unacked while its copy is
    /// refused before it goes back to the broker: four of the longest
    /// backoffs (2 min by default), far below the broker's
    /// `consumer_timeout` (30 min by default), which would close the
    /// channel.
    pub(crate) fn hold_limit(&self) -> Duration {
        self.copy_backoff_max.saturating_mul(4)
    }
}

/// One delay bucket of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bucket {
    pub(crate) name: ShortString,
    pub(crate) ttl_ms: u64,
    /// The group's queue, where its messages go when they expire.
    pub(crate) target: ShortString,
}

impl Bucket {
    /// The bucket of `ttl_ms` of the group whose retry prefix is `prefix`
    /// (`<topic>::<group>::retry`, checked by `topology::retry_queue_name`
    /// to leave room for [`LONGEST_SUFFIX`]) and whose queue is `target`.
    pub(crate) fn new(prefix: &str, ttl_ms: u64, target: &ShortString) -> Self {
        let name = format!("{prefix}.{ttl_ms}ms");
        Self {
            name: ShortString::try_new(name.as_str())
                .expect("the retry prefix was checked to leave room for the bucket suffix"),
            ttl_ms,
            target: target.clone(),
        }
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Declares `bucket`: `x-message-ttl` = its TTL, dead-lettering into its
/// group's queue. Quorum buckets dead-letter at least once, so a retry
/// survives the loss of a node between the bucket and the group's queue.
pub(crate) async fn declare_bucket(
    channel: &Channel,
    queue_type: QueueType,
    bucket: &Bucket,
) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text(queue_type.as_str()));
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(bucket.ttl_ms).unwrap_or(i64::MAX)),
    );
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(bucket.target.as_str()));
    if queue_type == QueueType::Quorum {
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
    }
    channel
        .queue_declare(bucket.name.clone(), QueueDeclareOptions::durable(), args)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_ttl_is_listed_for_removal() {
        let t = tuning(Duration::from_millis(250));
        let listed: Vec<u64> = t.bucket_ttls_ms().collect();
        for ms in [0, 1, 249, 250, 251, 1_000, 60_000, 86_400_000, u64::MAX] {
            let ttl = t.bucket_ttl_ms(Duration::from_millis(ms));
            assert!(listed.contains(&ttl), "bucket {ttl} ms (for {ms} ms) not listed");
        }
        assert!(listed.len() <= 33, "{} buckets", listed.len());
    }

    fn tuning(base: Duration) -> RetryTuning {
        RetryTuning::new(&RabbitConfig {
            retry_bucket_base: base,
            ..RabbitConfig::default()
        })
    }

    #[test]
    fn a_delay_waits_in_the_smallest_bucket_at_least_as_long() {
        let t = tuning(Duration::from_millis(100));
        let ms = |d: u64| t.bucket_ttl_ms(Duration::from_millis(d));
        assert_eq!(ms(1), 100);
        assert_eq!(ms(100), 100);
        assert_eq!(ms(101), 200);
        assert_eq!(ms(200), 200);
        assert_eq!(ms(6_000), 6_400);
        assert_eq!(ms(30_000), 51_200);
        assert_eq!(ms(600_000), 819_200);
        assert_eq!(t.bucket_ttl_ms(Duration::from_micros(100_001)), 200, "rounded up");
        for asked in [1u64, 99, 150, 1_000, 7_777, 123_456, 3_000_000_000] {
            let ttl = ms(asked);
            assert!(ttl >= asked, "{asked} ms waits {ttl} ms, less than asked");
            assert!(
                ttl < 2 * asked.max(100),
                "{asked} ms waits {ttl} ms, twice or more"
            );
        }
        // Past the broker's 32-bit TTLs: the longest bucket.
        let longest = 100 * (1 << 25);
        assert_eq!(ms(u64::from(u32::MAX)), longest);
        assert_eq!(t.bucket_ttl_ms(Duration::MAX), longest);
    }

    #[test]
    fn the_base_is_at_least_a_millisecond() {
        assert_eq!(tuning(Duration::ZERO).bucket_ttl_ms(Duration::from_millis(3)), 4);
        assert_eq!(
            tuning(Duration::from_secs(1)).bucket_ttl_ms(Duration::from_millis(1_500)),
            2_000
        );
    }

    #[test]
    fn copy_failures_back_off_up_to_the_longest() {
        let t = tuning(Duration::from_millis(100));
        let ms: Vec<u128> = (1..=10).map(|f| t.copy_backoff(f).as_millis()).collect();
        assert_eq!(
            ms,
            [200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000]
        );
        assert_eq!(t.copy_backoff(0).as_millis(), 200);
        assert_eq!(t.copy_backoff(u32::MAX).as_millis(), 30_000);
        assert_eq!(t.hold_limit().as_secs(), 120);
    }

    #[test]
    fn bucket_names_carry_their_ttl() {
        let b = Bucket::new("orders::billing::retry", 6_400, &"orders::billing".into());
        assert_eq!(b.name.as_str(), "orders::billing::retry.6400ms");
        assert_eq!(b.target.as_str(), "orders::billing");
    }
}
