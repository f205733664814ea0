//! Request decoding for every API at every version the broker advertises:
//! the first two bytes pick the API and version, the rest is the header and
//! body. A request that decodes is encoded again and decoded once more, and
//! must come back the same: what the broker reads is what the client meant.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, RequestKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use net::versions::SUPPORTED;

/// One input, as `cargo fuzz` hands it over (and as the corpus replay does).
pub fn run(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (api, lo, hi) = SUPPORTED[usize::from(data[0]) % SUPPORTED.len()];
    let version = lo + (i16::from(data[1]) % (hi - lo + 1));
    let mut frame = BytesMut::with_capacity(data.len() + 6);
    frame.put_i16(api as i16);
    frame.put_i16(version);
    frame.put_i32(7); // correlation id
    frame.put_slice(&data[2..]);
    let Ok(req) = net::decode_request(frame.freeze()) else {
        return;
    };
    assert_eq!(req.api_key, api);
    assert_eq!(req.version, version);

    // Round trip: encode what was decoded, decode it again.
    let header_version = api.request_header_version(version);
    let mut again = BytesMut::new();
    if req.header.encode(&mut again, header_version).is_err()
        || req.body.encode(&mut again, version).is_err()
    {
        return;
    }
    let mut again: Bytes = again.freeze();
    let header =
        RequestHeader::decode(&mut again, header_version).expect("re-encoded header decodes");
    let first_body = again.clone();
    let body = RequestKind::decode(api, &mut again, version).expect("re-encoded body decodes");
    assert!(again.is_empty(), "re-encoded body left bytes over");
    assert_eq!(header, req.header, "header changed in a round trip");
    if body != req.body {
        // A float field holding NaN is not equal to itself (AlterClientQuotas'
        // values): then the bytes must agree.
        let mut third = BytesMut::new();
        body.encode(&mut third, version)
            .expect("a decoded body encodes");
        assert_eq!(third.freeze(), first_body, "body changed in a round trip");
    }
}
