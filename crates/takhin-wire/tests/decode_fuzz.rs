//! Property tests over the request decoder: arbitrary bytes, and valid requests
//! with bytes flipped, cut or appended, must decode or fail cleanly, never panic
//! or allocate by an untrusted length.

#![allow(clippy::unwrap_used)]

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, MetadataRequest, ProduceRequest, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};
use proptest::prelude::*;
use takhin_wire::{decode_request, WireError, SERVED_APIS};

fn frame_of<R: Encodable>(api: ApiKey, version: i16, body: &R) -> Bytes {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("prop")))
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    buf.freeze()
}

fn valid_frames() -> Vec<Bytes> {
    let mut frames = Vec::new();
    for version in 0..=12 {
        frames.push(frame_of(
            ApiKey::Metadata,
            version,
            &MetadataRequest::default(),
        ));
    }
    for version in 3..=11 {
        frames.push(frame_of(
            ApiKey::Produce,
            version,
            &ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1000),
        ));
    }
    frames
}

#[test]
fn valid_frames_decode() {
    for frame in valid_frames() {
        decode_request(frame).unwrap();
    }
}

#[test]
fn huge_array_length_is_an_error_not_an_abort() {
    // Metadata v1: header then topics array length i32::MAX with no elements.
    let mut buf = BytesMut::new();
    buf.put_i16(ApiKey::Metadata as i16);
    buf.put_i16(1);
    buf.put_i32(1);
    buf.put_i16(-1); // null client id
    buf.put_i32(i32::MAX);
    let error = decode_request(buf.freeze()).unwrap_err();
    assert!(matches!(error, WireError::Malformed { .. }), "{error}");
}

#[test]
fn unknown_api_and_short_frames_are_errors() {
    assert!(matches!(
        decode_request(Bytes::from_static(&[0, 1, 2])),
        Err(WireError::Truncated { len: 3 })
    ));
    let frame = Bytes::from_static(&[0x7f, 0x00, 0, 0, 0, 0, 0, 9]);
    assert!(matches!(
        decode_request(frame),
        Err(WireError::UnknownApiKey {
            correlation_id: 9,
            ..
        })
    ));
}

#[test]
fn newer_api_versions_gets_fallback() {
    // ApiVersions v99: flexible header (v2), body unknown to us.
    let mut buf = BytesMut::new();
    buf.put_i16(ApiKey::ApiVersions as i16);
    buf.put_i16(99);
    buf.put_i32(5);
    buf.put_i16(-1);
    buf.put_u8(0); // no tagged fields
    buf.put_slice(b"whatever the future holds");
    let request = decode_request(buf.freeze()).unwrap();
    assert!(request.unsupported_version);
    assert_eq!(request.header.correlation_id, 5);
}

#[test]
fn unserved_version_of_other_api_is_refused() {
    let frame = frame_of(ApiKey::Metadata, 13, &MetadataRequest::default());
    assert!(matches!(
        decode_request(frame),
        Err(WireError::UnsupportedVersion { version: 13, .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_request(Bytes::from(bytes));
    }

    #[test]
    fn arbitrary_body_for_every_served_api_never_panics(
        api_idx in 0..SERVED_APIS.len(),
        version_offset in 0i16..16,
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let (api, min, max) = SERVED_APIS[api_idx];
        let version = min + version_offset % (max - min + 1);
        let mut buf = BytesMut::new();
        buf.put_i16(api as i16);
        buf.put_i16(version);
        buf.put_i32(1);
        buf.put_slice(&body);
        let _ = decode_request(buf.freeze());
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        frame_idx in 0usize..18,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let frames = valid_frames();
        let mut frame = frames[frame_idx % frames.len()].to_vec();
        for (index, byte) in flips {
            let i = index.index(frame.len());
            frame[i] ^= byte;
        }
        frame.truncate(cut.index(frame.len() + 1));
        frame.extend_from_slice(&tail);
        let _ = decode_request(Bytes::from(frame));
    }
}
