//! A raw writer and reader below busline and below rdkafka's safe header
//! API: records are produced and read through librdkafka's C API
//! (`rd_kafka_produceva`, `rd_kafka_header_add` with explicit lengths,
//! `rd_kafka_header_get_all`), so header names can be any bytes — what a
//! foreign producer may write and rdkafka's `&str` names cannot.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::bindings::{rd_kafka_vtype_t as V, rd_kafka_vu_t};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

/// Headers with byte names, in order; a `None` value is a null header.
pub type ByteHeaders = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// One record as read back.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub headers: ByteHeaders,
    pub payload: Vec<u8>,
}

/// Collects the delivery reports of a raw producer.
#[derive(Default)]
pub struct Reports(Mutex<Vec<Result<(i32, i64), String>>>);

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let report = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.0.lock().unwrap().push(report);
    }
}

/// Produces one record through `rd_kafka_produceva` and waits for its
/// delivery report; returns where it landed.
pub fn produce(
    config: &ClientConfig,
    topic: &str,
    key: Option<&[u8]>,
    headers: &[(Vec<u8>, Vec<u8>)],
    body: &[u8],
) -> Result<(i32, i64), String> {
    let producer: BaseProducer<Reports> = config
        .create_with_context(Reports::default())
        .map_err(|e| e.to_string())?;
    let topic_c = CString::new(topic).map_err(|e| e.to_string())?;
    // SAFETY: a fresh list; each name and value is copied by librdkafka
    // with the explicit length given.
    let native = unsafe { rdsys::rd_kafka_headers_new(headers.len()) };
    for (name, value) in headers {
        let err = unsafe {
            rdsys::rd_kafka_header_add(
                native,
                name.as_ptr().cast::<c_char>(),
                name.len() as isize,
                value.as_ptr().cast::<c_void>(),
                value.len() as isize,
            )
        };
        assert_eq!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR);
    }
    let mut vus: Vec<rd_kafka_vu_t> = Vec::new();
    let vu = |vtype, u| rd_kafka_vu_t { vtype, u };
    use rdsys::rd_kafka_vu_s__bindgen_ty_1 as U;
    use rdsys::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 as Mem;
    vus.push(vu(
        V::RD_KAFKA_VTYPE_TOPIC,
        U {
            cstr: topic_c.as_ptr(),
        },
    ));
    vus.push(vu(
        V::RD_KAFKA_VTYPE_VALUE,
        U {
            mem: Mem {
                ptr: body.as_ptr().cast_mut().cast(),
                size: body.len(),
            },
        },
    ));
    if let Some(k) = key {
        vus.push(vu(
            V::RD_KAFKA_VTYPE_KEY,
            U {
                mem: Mem {
                    ptr: k.as_ptr().cast_mut().cast(),
                    size: k.len(),
                },
            },
        ));
    }
    vus.push(vu(
        V::RD_KAFKA_VTYPE_MSGFLAGS,
        U {
            i: rdsys::RD_KAFKA_MSG_F_COPY,
        },
    ));
    vus.push(vu(V::RD_KAFKA_VTYPE_HEADERS, U { headers: native }));
    // SAFETY: every pointer in `vus` is valid for the call; with
    // MSGFLAGS=COPY librdkafka copies key and value; on success it owns
    // the header list, on failure it is ours to destroy.
    let error = unsafe { rdsys::rd_kafka_produceva(producer.client().native_ptr(), vus.as_ptr(), vus.len()) };
    if !error.is_null() {
        let text = unsafe { CStr::from_ptr(rdsys::rd_kafka_error_string(error)) }
            .to_string_lossy()
            .into_owned();
        unsafe {
            rdsys::rd_kafka_error_destroy(error);
            rdsys::rd_kafka_headers_destroy(native);
        }
        return Err(format!("produceva: {text}"));
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let reports = producer.context().0.lock().unwrap().clone();
    match reports.as_slice() {
        [one] => one.clone(),
        other => Err(format!("expected one delivery report, got {other:?}")),
    }
}

/// The headers of a received message, as bytes, through the C API.
pub fn headers_of(message: &BorrowedMessage<'_>) -> ByteHeaders {
    let mut native = ptr::null_mut();
    // SAFETY: the message is valid while borrowed; the list is read within.
    let err = unsafe { rdsys::rd_kafka_message_headers(message.ptr(), &mut native) };
    if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Vec::new();
    }
    let count = unsafe { rdsys::rd_kafka_header_cnt(native) };
    (0..count)
        .map(|idx| {
            let (mut name, mut value, mut size) = (ptr::null(), ptr::null(), 0usize);
            let err =
                unsafe { rdsys::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size) };
            assert_eq!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR);
            let name = unsafe { CStr::from_ptr(name) }.to_bytes().to_vec();
            let value = (!value.is_null())
                .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec());
            (name, value)
        })
        .collect()
}

/// Reads at least `n` records of `topic` (partitions `0..partitions`, from
/// the beginning) within `limit`, plus whatever else arrives meanwhile.
pub fn read(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
    n: usize,
    limit: Duration,
) -> Vec<RawRecord> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", "raw-reader-unused")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "read {} of {n} records of `{topic}` within {limit:?}",
            out.len()
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("a record");
        out.push(RawRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            headers: headers_of(&m),
            payload: m.payload().unwrap_or_default().to_vec(),
        });
    }
    out
}
