//! The Kafka wire protocol: length-prefixed framing, request and response
//! codecs (the `kafka-protocol` crate), version negotiation, and the
//! connection loop that runs on a shard.
//!
//! `frame`, `codec`, `versions` and `limits` are sans-IO and testable with a byte
//! buffer; only `connection` and `sasl` (the authentication before it) touch
//! a socket. Knows nothing about storage.

pub mod codec;
pub mod connection;
pub mod frame;
pub mod limits;
pub mod sasl;
pub mod versions;

pub use codec::{
    decode_request, encode_reply, encode_response, DecodeError, Reply, Request, Spliced, Stages,
    Timing,
};
pub use connection::{serve_connection, ConnectionSettings, Service};
pub use kafka_protocol;
pub use limits::{ConnectionLimits, ConnectionPermit, Refusal};
pub use sasl::{SaslExchange, SaslStep};
