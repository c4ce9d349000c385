//! The one place nonce-manager's errors become gRPC statuses. The codes say what the
//! caller does next: fix the request (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
//! FAILED_PRECONDITION), or retry the same request id (UNAVAILABLE, DEADLINE_EXCEEDED,
//! ABORTED), which never spends a second nonce.

use nonce_manager::chain::ChainError;
use nonce_manager::view::ViewError;
use nonce_manager::{AllocateError, InvalidArgument, StoreError, SubmitError};
use tonic::{Code, Status};

/// A malformed request.
pub fn invalid(error: InvalidArgument) -> Status {
    Status::invalid_argument(error.0)
}

/// A chain JSON-RPC failure.
pub fn chain(context: &str, error: &ChainError) -> Status {
    let message = format!("{context}: {error}");
    match error {
        ChainError::Timeout => Status::deadline_exceeded(format!("{message}; retry")),
        ChainError::Transport(_) => Status::unavailable(format!("{message}; retry")),
        // A node's verdict on the transaction itself (insufficient funds, fee too low,
        // gas limit above the block's): retrying the same bytes will not help.
        ChainError::Rpc { .. } => Status::failed_precondition(message),
        ChainError::AlreadyKnown | ChainError::NonceTooLow | ChainError::ReplacementUnderpriced => {
            Status::aborted(format!("{message}; retry"))
        }
    }
}

/// A store failure.
pub fn store(error: &StoreError) -> Status {
    match error {
        StoreError::Fenced { .. } => {
            Status::unavailable(format!("{error}: another node took the signer over; retry"))
        }
        StoreError::NotFound(_) => Status::not_found(error.to_string()),
        StoreError::InvalidTransition { .. } => Status::aborted(format!("{error}; retry")),
        StoreError::Database(source) => {
            Status::unavailable(format!("nonce store unavailable: {source}; retry"))
        }
        StoreError::Corrupt(_) | StoreError::Lease(_) => Status::internal(error.to_string()),
    }
}

/// An allocation failure.
pub fn allocate(error: &AllocateError) -> Status {
    match error {
        AllocateError::LeaseLost(signer) => Status::unavailable(format!(
            "this node no longer holds signer {signer:#x}; retry"
        )),
        AllocateError::RequestConflict(request_id) => Status::already_exists(format!(
            "request id {request_id} was already used for a different transaction"
        )),
        AllocateError::Chain(source) => chain("reading the chain's pending nonce", source),
        AllocateError::Store(source) => store(source),
    }
}

/// A submission failure.
pub fn submit(error: &SubmitError) -> Status {
    match error {
        SubmitError::InvalidArgument(error) => Status::invalid_argument(error.0.clone()),
        SubmitError::Allocate(error) => allocate(error),
        SubmitError::Store(error) => store(error),
        SubmitError::Precondition(message) => Status::failed_precondition(message.clone()),
        SubmitError::Sign(error) => Status::internal(format!("signing failed: {error}")),
        SubmitError::Chain(error) => chain("broadcast (the signed attempt is stored)", error),
    }
}

/// A signer view failure.
pub fn view(error: &ViewError) -> Status {
    match error {
        ViewError::Store(error) => store(error),
        ViewError::Lease(error) => Status::unavailable(format!("lease store: {error}; retry")),
    }
}

/// True when retrying the same call elsewhere (after re-routing) may succeed.
pub fn is_lease_moved(status: &Status) -> bool {
    status.code() == Code::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(error: ChainError, code: Code) {
        assert_eq!(chain("x", &error).code(), code, "{error}");
    }

    #[test]
    fn chain_codes() {
        check(ChainError::Timeout, Code::DeadlineExceeded);
        check(ChainError::Transport("refused".into()), Code::Unavailable);
        check(
            ChainError::Rpc {
                code: -32000,
                message: "insufficient funds".into(),
            },
            Code::FailedPrecondition,
        );
        check(ChainError::NonceTooLow, Code::Aborted);
    }

    #[test]
    fn allocate_codes() {
        let signer = alloy_primitives::Address::ZERO;
        assert_eq!(
            allocate(&AllocateError::LeaseLost(signer)).code(),
            Code::Unavailable
        );
        let id = nonce_manager::RequestId::new("r").expect("valid id");
        assert_eq!(
            allocate(&AllocateError::RequestConflict(id.clone())).code(),
            Code::AlreadyExists
        );
        assert_eq!(store(&StoreError::NotFound(id)).code(), Code::NotFound);
        assert_eq!(
            store(&StoreError::Corrupt("x".into())).code(),
            Code::Internal
        );
    }
}
