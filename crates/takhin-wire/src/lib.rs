//! Kafka wire framing for the Takhin broker: turns one request frame into a typed
//! request and a typed response into one response frame, and owns the table of API
//! versions the broker really serves. Pure: bytes in, bytes out, no IO, so the
//! decoder can be fuzzed and property-tested on its own.

mod frame;
mod versions;

pub use frame::{decode_request, encode_response, DecodedRequest, WireError};
pub use kafka_protocol;
pub use versions::{api_versions_response, served_versions, SERVED_APIS};

/// Largest request frame accepted, like Kafka's `socket.request.max.bytes` default.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 100 * 1024 * 1024;
