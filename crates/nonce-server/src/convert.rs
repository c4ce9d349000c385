//! Between the wire and nonce-manager's types: parsing with precise errors on the way in,
//! rendering on the way out.

use std::str::FromStr;

use alloy_primitives::{Address, Bytes, U256};
use nonce_manager::blocks::StableBlock;
use nonce_manager::chain::BlockRef;
use nonce_manager::{InvalidArgument, ManagedTransaction, RequestId, TxPayload, TxStatus};

use crate::proto;

/// A `0x` + 40 hex digit address.
pub(crate) fn address(field: &str, text: &str) -> Result<Address, InvalidArgument> {
    let bad = || {
        InvalidArgument(format!(
            "{field} {text:?} is not a 0x-prefixed 20-byte hex address"
        ))
    };
    let hex = text.strip_prefix("0x").ok_or_else(bad)?;
    if hex.len() != 40 {
        return Err(bad());
    }
    Address::from_str(hex).map_err(|_| bad())
}

pub(crate) fn request_id(text: &str) -> Result<RequestId, InvalidArgument> {
    RequestId::new(text)
}

/// The payload of a SubmitTransaction, validated.
pub(crate) fn payload(
    request: &proto::SubmitTransactionRequest,
) -> Result<TxPayload, InvalidArgument> {
    let to = address("to", &request.to)?;
    let value = if request.value.is_empty() {
        U256::ZERO
    } else {
        if !request.value.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(InvalidArgument(format!(
                "value {:?} is not a decimal amount of wei",
                request.value
            )));
        }
        U256::from_str_radix(&request.value, 10).map_err(|_| {
            InvalidArgument(format!("value {:?} does not fit 256 bits", request.value))
        })?
    };
    let data = if request.data.is_empty() {
        Bytes::new()
    } else {
        let hex = request
            .data
            .strip_prefix("0x")
            .ok_or_else(|| InvalidArgument("data must be 0x-prefixed hex".to_owned()))?;
        Bytes::from_str(hex).map_err(|_| {
            InvalidArgument("data is not valid hex (odd length or non-hex digit)".to_owned())
        })?
    };
    let payload = TxPayload {
        to,
        value,
        data,
        gas_limit: request.gas_limit,
        max_fee_per_gas: u128::from(request.max_fee_per_gas),
        max_priority_fee_per_gas: u128::from(request.max_priority_fee_per_gas),
    };
    if payload.max_fee_per_gas == 0 {
        return Err(InvalidArgument("max fee per gas is zero".to_owned()));
    }
    payload.validate()?;
    Ok(payload)
}

pub(crate) fn status(status: TxStatus) -> proto::TransactionStatus {
    match status {
        TxStatus::Pending => proto::TransactionStatus::Pending,
        TxStatus::Tracking => proto::TransactionStatus::Tracking,
        TxStatus::Confirmed => proto::TransactionStatus::Confirmed,
        TxStatus::Failed => proto::TransactionStatus::Failed,
        TxStatus::Reconciling => proto::TransactionStatus::Reconciling,
    }
}

pub(crate) fn status_filter(value: i32) -> Result<Option<TxStatus>, InvalidArgument> {
    let status = proto::TransactionStatus::try_from(value)
        .map_err(|_| InvalidArgument(format!("unknown status {value}")))?;
    Ok(match status {
        proto::TransactionStatus::Unspecified => None,
        proto::TransactionStatus::Pending => Some(TxStatus::Pending),
        proto::TransactionStatus::Tracking => Some(TxStatus::Tracking),
        proto::TransactionStatus::Confirmed => Some(TxStatus::Confirmed),
        proto::TransactionStatus::Failed => Some(TxStatus::Failed),
        proto::TransactionStatus::Reconciling => Some(TxStatus::Reconciling),
    })
}

fn fee(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn block_info(block: &BlockRef) -> proto::BlockInfo {
    proto::BlockInfo {
        number: block.number,
        hash: format!("{:#x}", block.hash),
        parent_hash: format!("{:#x}", block.parent_hash),
    }
}

/// A confirmed-block listener event as the API streams it.
pub(crate) fn stable_block(event: StableBlock) -> proto::ConfirmedBlockEvent {
    use proto::confirmed_block_event::Event;
    let event = match event {
        StableBlock::Confirmed(block) => Event::Confirmed(block_info(&block)),
        StableBlock::DeepReorg {
            fork_height,
            orphaned,
        } => Event::DeepReorg(proto::DeepReorg {
            fork_height,
            orphaned: orphaned.iter().map(block_info).collect(),
        }),
    };
    proto::ConfirmedBlockEvent { event: Some(event) }
}

pub(crate) fn transaction(record: &ManagedTransaction) -> proto::Transaction {
    proto::Transaction {
        request_id: record.request_id.to_string(),
        signer: format!("{:#x}", record.signer),
        nonce: record.nonce,
        to: format!("{:#x}", record.payload.to),
        value: record.payload.value.to_string(),
        data: record.payload.data.to_string(),
        gas_limit: record.payload.gas_limit,
        max_fee_per_gas: fee(record.payload.max_fee_per_gas),
        max_priority_fee_per_gas: fee(record.payload.max_priority_fee_per_gas),
        status: status(record.status).into(),
        tx_hash: record
            .attempts
            .last()
            .map(|attempt| format!("{:#x}", attempt.hash))
            .unwrap_or_default(),
        attempts: record
            .attempts
            .iter()
            .map(|attempt| proto::Attempt {
                hash: format!("{:#x}", attempt.hash),
                max_fee_per_gas: fee(attempt.max_fee_per_gas),
                max_priority_fee_per_gas: fee(attempt.max_priority_fee_per_gas),
                sent_at_ms: attempt.sent_at.0,
            })
            .collect(),
        created_at_ms: record.created_at.0,
        updated_at_ms: record.updated_at.0,
        fencing_token: record.fencing_token.get(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> proto::SubmitTransactionRequest {
        proto::SubmitTransactionRequest {
            request_id: "r".into(),
            signer: format!("{:#x}", Address::repeat_byte(1)),
            to: format!("{:#x}", Address::repeat_byte(2)),
            value: "1000".into(),
            data: "0xdeadbeef".into(),
            gas_limit: 50_000,
            max_fee_per_gas: 10,
            max_priority_fee_per_gas: 1,
        }
    }

    fn check_bad(edit: impl FnOnce(&mut proto::SubmitTransactionRequest), needle: &str) {
        let mut bad = request();
        edit(&mut bad);
        let error = payload(&bad).expect_err("refused");
        assert!(error.0.contains(needle), "{error} lacks {needle:?}");
    }

    #[test]
    fn good_payload_parses() {
        let parsed = payload(&request()).expect("valid");
        assert_eq!(parsed.value, U256::from(1000));
        assert_eq!(parsed.data.as_ref(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn bad_payloads_are_named() {
        check_bad(|r| r.to = "0x1234".into(), "to");
        check_bad(|r| r.to = format!("{:x}", Address::repeat_byte(2)), "to");
        check_bad(|r| r.value = "-1".into(), "value");
        check_bad(|r| r.value = "0x10".into(), "value");
        check_bad(|r| r.data = "deadbeef".into(), "0x-prefixed");
        check_bad(|r| r.data = "0xabc".into(), "hex");
        check_bad(|r| r.data = "0xzz".into(), "hex");
        check_bad(|r| r.gas_limit = 0, "gas limit");
        check_bad(|r| r.max_fee_per_gas = 0, "max fee");
        check_bad(|r| r.max_priority_fee_per_gas = 11, "priority fee");
    }

    #[test]
    fn addresses() {
        assert!(address("signer", "0x0000000000000000000000000000000000000001").is_ok());
        assert!(address("signer", "0xZZ00000000000000000000000000000000000001").is_err());
        assert!(address("signer", "").is_err());
    }
}
