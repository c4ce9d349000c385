//! Property test: random appends (random codecs and sizes) interleaved with clean and unclean
//! reopens; every offset must read back what a simple Vec model says.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use proptest::prelude::*;
use takhin_log::{LogConfig, PartitionLog};

#[derive(Clone, Debug)]
enum Op {
    Append {
        records: usize,
        codec: usize,
        size: usize,
    },
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..5, 0usize..5, 1usize..120)
            .prop_map(|(records, codec, size)| Op::Append { records, codec, size }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 700,
        index_interval_bytes: 100,
        segment_ms: None,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn check(log: &PartitionLog, model: &[String]) {
    assert_eq!(log.log_end_offset(), model.len() as i64);
    for (o, expected) in model.iter().enumerate() {
        let res = log.read(o as i64, 1, true).unwrap();
        let recs = decode(&res.records);
        let r = recs.iter().find(|r| r.offset == o as i64).unwrap();
        assert_eq!(&value_str(r), expected, "offset {o}");
    }
    assert!(log
        .read(model.len() as i64, 1 << 20, true)
        .unwrap()
        .records
        .is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn reads_match_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), config()).unwrap();
        let mut model: Vec<String> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Op::Append { records, codec, size } => {
                    let vals: Vec<String> = (0..records)
                        .map(|j| format!("{i}-{j}-{}", "x".repeat(size)))
                        .collect();
                    let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
                    let info = log.append(&batch(&refs, i as i64, COMPRESSIONS[codec]), 0).unwrap();
                    prop_assert_eq!(info.base_offset, model.len() as i64);
                    model.extend(vals);
                }
                Op::Reopen { clean } => {
                    if clean {
                        log.close().unwrap();
                    }
                    drop(log);
                    log = PartitionLog::open(dir.path(), config()).unwrap();
                    check(&log, &model);
                }
            }
        }
        check(&log, &model);
    }
}
