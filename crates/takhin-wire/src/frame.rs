//! One request frame in, one response frame out. A frame is the bytes after the
//! 4-byte big-endian size prefix; the caller reads frames off the socket and
//! enforces the size limit before calling in here.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::versions::served_versions;

/// Why a frame could not be turned into a request. Every variant means the
/// connection is closed after logging, as Kafka does, except where the caller
/// can answer (ApiVersions is answered through [`DecodedRequest::unsupported_version`]).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes is too short for a request header")]
    Truncated { len: usize },
    #[error("unknown api key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey { api_key: i16, correlation_id: i32 },
    #[error("{api:?} v{version} is not served (correlation id {correlation_id})")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    #[error("malformed {api:?} v{version} request (correlation id {correlation_id}): {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        reason: String,
    },
    #[error("cannot encode {api:?} v{version} response: {reason}")]
    Encode {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

/// A decoded request with the header fields the broker needs.
#[derive(Debug)]
pub struct DecodedRequest {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
    /// An ApiVersions request of a version newer than served: answer with a v0
    /// response carrying UNSUPPORTED_VERSION and the served table (KIP-511), so
    /// the client can retry with a version we know.
    pub unsupported_version: bool,
}

const MIN_HEADER_BYTES: usize = 8;

/// Decodes one request frame. Never panics on any input.
pub fn decode_request(frame: Bytes) -> Result<DecodedRequest, WireError> {
    if frame.len() < MIN_HEADER_BYTES {
        return Err(WireError::Truncated { len: frame.len() });
    }
    let api_key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(api_key_raw).map_err(|()| WireError::UnknownApiKey {
        api_key: api_key_raw,
        correlation_id,
    })?;
    let malformed = |reason: String| WireError::Malformed {
        api: api_key,
        version,
        correlation_id,
        reason,
    };

    let served = served_versions(api_key);
    let in_range = served.is_some_and(|range| range.min <= version && version <= range.max);
    if !in_range {
        // A client probing with a newer ApiVersions gets the fallback answer; its
        // body may be of a format we do not know, so it is not decoded.
        if api_key == ApiKey::ApiVersions && version >= 0 {
            let mut buf = frame;
            let header = RequestHeader::decode(&mut buf, api_key.request_header_version(version))
                .map_err(|error| malformed(error.to_string()))?;
            return Ok(DecodedRequest {
                api_key,
                version,
                header,
                body: RequestKind::ApiVersions(Default::default()),
                unsupported_version: true,
            });
        }
        return Err(WireError::UnsupportedVersion {
            api: api_key,
            version,
            correlation_id,
        });
    }

    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, api_key.request_header_version(version))
        .map_err(|error| malformed(format!("header: {error:#}")))?;
    let body = RequestKind::decode(api_key, &mut buf, version)
        .map_err(|error| malformed(format!("{error:#}")))?;
    Ok(DecodedRequest {
        api_key,
        version,
        header,
        body,
        unsupported_version: false,
    })
}

/// Encodes a response frame, size prefix included.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<BytesMut, WireError> {
    let encode_error = |error: anyhow::Error| WireError::Encode {
        api: api_key,
        version,
        reason: error.to_string(),
    };
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut buf, api_key.response_header_version(version))
        .map_err(encode_error)?;
    response.encode(&mut buf, version).map_err(encode_error)?;
    let body_len = i32::try_from(buf.len() - 4).map_err(|_| WireError::Encode {
        api: api_key,
        version,
        reason: "response larger than 2 GiB".to_owned(),
    })?;
    buf[0..4].copy_from_slice(&body_len.to_be_bytes());
    Ok(buf)
}
