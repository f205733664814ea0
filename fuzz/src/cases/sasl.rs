//! The SASL exchanges an unauthenticated client drives (`broker::sasl`):
//! PLAIN's one token, and SCRAM's client-first and client-final messages,
//! each from any bytes or from a well-formed first message around fuzzed
//! parts. Nothing may panic, and no exchange may authenticate without the
//! password.

use std::sync::Arc;

use super::Choices;
use broker::controller::records::ScramCredential;
use broker::sasl::{Plain, PlainUsers, Scram, ScramHash};
use net::{SaslExchange, SaslStep};

fn done(step: &Result<SaslStep, String>) -> bool {
    matches!(step, Ok(SaslStep::Done { .. }))
}

/// One input, as `cargo fuzz` hands it over (and as the corpus replay does).
pub fn run(data: &[u8]) {
    let mut c = Choices::new(data);
    let hash = if c.u8().is_multiple_of(2) {
        ScramHash::Sha256
    } else {
        ScramHash::Sha512
    };
    let split = usize::from(c.u16());
    let rest = c.rest();
    let (first, second) = rest.split_at(split.min(rest.len()));

    // PLAIN: only the file's password authenticates.
    let users = Arc::new(PlainUsers::parse("user:pencil").unwrap());
    let step = Plain::new(users).step(first);
    if done(&step) {
        assert_eq!(
            first,
            b"\0user\0pencil".as_slice(),
            "PLAIN let {first:?} in"
        );
    }

    // SCRAM: the credential's salted password is random bytes nobody knows,
    // so no client-final message can prove it.
    let credential = ScramCredential {
        iterations: 4096,
        salt: b"salt".to_vec(),
        salted_password: vec![0x5a; 32],
    };
    let lookup = move |u: &str| (u == "user").then(|| credential.clone());
    let mut s = Scram::new(hash, Box::new(lookup.clone()));
    let a = s.step(first);
    let b = s.step(second);
    assert!(!done(&a) && !done(&b), "SCRAM authenticated from raw bytes");
    // A well-formed first message, then fuzzed bytes as the final one.
    let mut s = Scram::new(hash, Box::new(lookup));
    let nonce: String = first
        .iter()
        .map(|&b| char::from(b'!' + b % 90))
        .filter(|&ch| ch != ',')
        .take(24)
        .collect();
    let hello = format!("n,,n=user,r=x{nonce}");
    if let Ok(SaslStep::Challenge(_)) = s.step(hello.as_bytes()) {
        assert!(
            !done(&s.step(second)),
            "SCRAM authenticated without the password"
        );
    }
}
