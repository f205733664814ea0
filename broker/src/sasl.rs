//! The SASL mechanisms this broker serves, as Kafka serves them: PLAIN
//! against the users file (`sasl_plain_users_file`, Kafka's JAAS
//! `user_NAME="password"` entries), and SCRAM-SHA-256 / SCRAM-SHA-512
//! (RFC 5802, RFC 7677) against the credentials kept in the metadata
//! (AlterUserScramCredentials, `kafka-configs --add-config
//! SCRAM-SHA-256=[password=...]`). Also the client side of PLAIN, which
//! brokers use to reach each other (`peer.rs`).
//!
//! Pure logic, no I/O: the connection's exchange (`net::sasl`) feeds each
//! token in and sends what comes out, on the shard that accepted the
//! connection. The users file is read once at startup (`PlainUsers::parse`
//! on what `Config::load` read). Secrets are compared in constant time and
//! never logged.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use hmac::{KeyInit, Mac};
use net::{SaslExchange, SaslStep};
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::controller::records::ScramCredential;

pub const PLAIN: &str = "PLAIN";
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_512: &str = "SCRAM-SHA-512";
/// Every mechanism this broker can enable.
pub const MECHANISMS: [&str; 3] = [PLAIN, SCRAM_SHA_256, SCRAM_SHA_512];

/// Kafka's number for a SCRAM mechanism (`ScramMechanism`), as the
/// metadata keeps credentials under it.
pub fn scram_id(mechanism: &str) -> Option<i8> {
    match mechanism {
        SCRAM_SHA_256 => Some(1),
        SCRAM_SHA_512 => Some(2),
        _ => None,
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// PLAIN's users: name -> password.
#[derive(Default)]
pub struct PlainUsers(HashMap<String, String>);

impl fmt::Debug for PlainUsers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlainUsers({} users)", self.0.len())
    }
}

impl PlainUsers {
    /// One `user:password` per line; blank lines and lines starting with
    /// `#` are skipped. The password is everything after the first `:`.
    pub fn parse(text: &str) -> Result<PlainUsers, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((user, password)) = line.split_once(':') else {
                return Err(format!("line {}: expected user:password", n + 1));
            };
            let user = user.trim();
            if user.is_empty() || password.is_empty() {
                return Err(format!("line {}: empty user or password", n + 1));
            }
            if users
                .insert(user.to_string(), password.to_string())
                .is_some()
            {
                return Err(format!("line {}: user {user} listed twice", n + 1));
            }
        }
        Ok(PlainUsers(users))
    }

    pub fn password(&self, user: &str) -> Option<&str> {
        self.0.get(user).map(String::as_str)
    }
}

/// The server side of PLAIN (RFC 4616) for one connection.
pub struct Plain {
    users: Arc<PlainUsers>,
}

impl Plain {
    pub fn new(users: Arc<PlainUsers>) -> Plain {
        Plain { users }
    }
}

impl SaslExchange for Plain {
    fn step(&mut self, token: &[u8]) -> Result<SaslStep, String> {
        // authzid NUL authcid NUL password (Kafka's PlainSaslServer).
        let parts: Vec<&[u8]> = token.split(|b| *b == 0).collect();
        let [authzid, user, password] = parts[..] else {
            return Err(format!(
                "Invalid SASL/PLAIN response: expected 3 tokens, got {}",
                parts.len()
            ));
        };
        let (Ok(authzid), Ok(user)) = (std::str::from_utf8(authzid), std::str::from_utf8(user))
        else {
            return Err("Invalid SASL/PLAIN response: not UTF-8".into());
        };
        if user.is_empty() {
            return Err("Authentication failed: username not specified".into());
        }
        if password.is_empty() {
            return Err("Authentication failed: password not specified".into());
        }
        if !authzid.is_empty() && authzid != user {
            return Err("Authentication failed: Client requested an authorization id that is different from username".into());
        }
        let known = self.users.password(user).map(str::as_bytes);
        // An unknown user costs the same compare as a known one.
        let expected = known.unwrap_or(b"\0unknown user\0");
        let matches: bool = expected.ct_eq(password).into();
        if known.is_none() || !matches {
            return Err("Authentication failed: Invalid username or password".into());
        }
        Ok(SaslStep::Done {
            token: Vec::new(),
            user: user.to_string(),
        })
    }
}

/// The client's first PLAIN token.
pub fn plain_token(user: &str, password: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(user.len() + password.len() + 2);
    t.push(0);
    t.extend_from_slice(user.as_bytes());
    t.push(0);
    t.extend_from_slice(password.as_bytes());
    t
}

/// SCRAM's hash function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    Sha256,
    Sha512,
}

impl ScramHash {
    pub fn of(mechanism: &str) -> Option<ScramHash> {
        match mechanism {
            SCRAM_SHA_256 => Some(ScramHash::Sha256),
            SCRAM_SHA_512 => Some(ScramHash::Sha512),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ScramHash::Sha256 => SCRAM_SHA_256,
            ScramHash::Sha512 => SCRAM_SHA_512,
        }
    }

    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            // HMAC takes a key of any length.
            let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        match self {
            ScramHash::Sha256 => run::<hmac::Hmac<sha2::Sha256>>(key, data),
            ScramHash::Sha512 => run::<hmac::Hmac<sha2::Sha512>>(key, data),
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            ScramHash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            ScramHash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// Looks a user's credential up for the exchange's mechanism, in the
/// metadata as of the exchange.
pub type CredentialLookup = Box<dyn Fn(&str) -> Option<ScramCredential>>;

enum ScramState {
    ClientFirst,
    ClientFinal {
        user: String,
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
        credential: ScramCredential,
    },
    Over,
}

/// The server side of SCRAM for one connection.
pub struct Scram {
    hash: ScramHash,
    lookup: CredentialLookup,
    state: ScramState,
}

impl Scram {
    pub fn new(hash: ScramHash, lookup: CredentialLookup) -> Scram {
        Scram {
            hash,
            lookup,
            state: ScramState::ClientFirst,
        }
    }

    fn client_first(&mut self, msg: &str) -> Result<SaslStep, String> {
        let invalid = |why: &str| Err(format!("Invalid SCRAM client first message: {why}"));
        // gs2-header: a channel-binding flag, an optional authzid, then the
        // bare message.
        let Some((flag, rest)) = msg.split_once(',') else {
            return invalid("no GS2 header");
        };
        if flag != "n" && flag != "y" {
            return invalid("channel binding is not supported");
        }
        let Some((authzid, bare)) = rest.split_once(',') else {
            return invalid("no GS2 header");
        };
        let mut attrs = bare.split(',');
        let user = match attrs.next().and_then(|a| a.strip_prefix("n=")) {
            Some(u) => unescape(u).ok_or("Invalid SCRAM client first message: bad user name")?,
            None => return invalid("no user name"),
        };
        let Some(client_nonce) = attrs.next().and_then(|a| a.strip_prefix("r=")) else {
            return invalid("no nonce");
        };
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return invalid("bad nonce");
        }
        for ext in attrs {
            // Kafka's one extension: a delegation token instead of a
            // password. This broker issues no tokens.
            if ext == "tokenauth=true" {
                return Err("Authentication failed: delegation tokens are not enabled".into());
            }
        }
        if !authzid.is_empty()
            && authzid.strip_prefix("a=").and_then(unescape) != Some(user.clone())
        {
            return Err("Authentication failed: Authzid and username must match".into());
        }
        let Some(credential) = (self.lookup)(&user) else {
            return Err("Authentication failed: Invalid user credentials".into());
        };
        let mut server_nonce = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        self.state = ScramState::ClientFinal {
            user,
            gs2_header: format!("{flag},{authzid},"),
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            credential,
        };
        Ok(SaslStep::Challenge(server_first.into_bytes()))
    }
}

/// A SCRAM `saslname`: `=2C` is a comma, `=3D` an equals sign, and no other
/// `=` may appear.
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

impl SaslExchange for Scram {
    fn step(&mut self, token: &[u8]) -> Result<SaslStep, String> {
        let msg = std::str::from_utf8(token).map_err(|_| "Invalid SCRAM message: not UTF-8")?;
        match std::mem::replace(&mut self.state, ScramState::Over) {
            ScramState::ClientFirst => self.client_first(msg),
            ScramState::ClientFinal {
                user,
                gs2_header,
                client_first_bare,
                server_first,
                nonce,
                credential,
            } => {
                let failed = || {
                    format!(
                        "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
                        self.hash.name()
                    )
                };
                let Some((without_proof, proof)) = msg.rsplit_once(",p=") else {
                    return Err("Invalid SCRAM client final message: no proof".into());
                };
                let mut attrs = without_proof.split(',');
                let binding = attrs.next().and_then(|a| a.strip_prefix("c="));
                if binding != Some(B64.encode(gs2_header.as_bytes()).as_str()) {
                    return Err(
                        "Invalid SCRAM client final message: channel binding differs".into(),
                    );
                }
                if attrs.next().and_then(|a| a.strip_prefix("r=")) != Some(nonce.as_str()) {
                    return Err("Invalid SCRAM client final message: nonce differs".into());
                }
                let proof = B64.decode(proof).map_err(|_| failed())?;
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let h = self.hash;
                let client_key = h.hmac(&credential.salted_password, b"Client Key");
                let stored_key = h.digest(&client_key);
                let signature = h.hmac(&stored_key, auth_message.as_bytes());
                if proof.len() != signature.len() {
                    return Err(failed());
                }
                let claimed: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
                if !bool::from(h.digest(&claimed).ct_eq(&stored_key)) {
                    return Err(failed());
                }
                let server_key = h.hmac(&credential.salted_password, b"Server Key");
                let server_signature = h.hmac(&server_key, auth_message.as_bytes());
                Ok(SaslStep::Done {
                    token: format!("v={}", B64.encode(server_signature)).into_bytes(),
                    user,
                })
            }
            ScramState::Over => Err("Invalid SCRAM exchange: already over".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> ScramCredential {
        // Hi() of RFC 5802: PBKDF2 with HMAC.
        let mut u = h_salt(hash, password, salt);
        let mut out = u.clone();
        for _ in 1..iterations {
            u = hash.hmac(password.as_bytes(), &u);
            out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
        }
        ScramCredential {
            iterations: iterations as i32,
            salt: salt.to_vec(),
            salted_password: out,
        }
    }

    fn h_salt(hash: ScramHash, password: &str, salt: &[u8]) -> Vec<u8> {
        let mut s = salt.to_vec();
        s.extend_from_slice(&[0, 0, 0, 1]);
        hash.hmac(password.as_bytes(), &s)
    }

    fn lookup(hash: ScramHash) -> CredentialLookup {
        // Computed once per hash: 4096 rounds are slow in a debug build.
        static CREDENTIALS: std::sync::OnceLock<[ScramCredential; 2]> = std::sync::OnceLock::new();
        let creds = CREDENTIALS.get_or_init(|| {
            [ScramHash::Sha256, ScramHash::Sha512]
                .map(|h| credential(h, "pencil", b"salt-of-user", 4096))
        });
        let cred = creds[usize::from(hash == ScramHash::Sha512)].clone();
        Box::new(move |u| (u == "user").then(|| cred.clone()))
    }

    /// The client side, as RFC 5802 describes it.
    fn client_final(
        hash: ScramHash,
        password: &str,
        first_bare: &str,
        server_first: &str,
    ) -> (String, Vec<u8>) {
        let attrs: HashMap<&str, &str> = server_first
            .split(',')
            .map(|a| a.split_at(2))
            .map(|(k, v)| (&k[..1], v))
            .collect();
        let salt = B64.decode(attrs["s"]).unwrap();
        let iterations: u32 = attrs["i"].parse().unwrap();
        let salted = credential(hash, password, &salt, iterations).salted_password;
        let without_proof = format!("c=biws,r={}", attrs["r"]);
        let auth = format!("{first_bare},{server_first},{without_proof}");
        let client_key = hash.hmac(&salted, b"Client Key");
        let sig = hash.hmac(&hash.digest(&client_key), auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let server_sig = hash.hmac(&hash.hmac(&salted, b"Server Key"), auth.as_bytes());
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            server_sig,
        )
    }

    fn exchange(
        hash: ScramHash,
        user: &str,
        password: &str,
    ) -> Result<(String, Vec<u8>, Vec<u8>), String> {
        let mut s = Scram::new(hash, lookup(hash));
        let bare = format!("n={user},r=clientnonce123");
        let SaslStep::Challenge(first) = s.step(format!("n,,{bare}").as_bytes())? else {
            panic!("no challenge")
        };
        let first = String::from_utf8(first).unwrap();
        let (fin, server_sig) = client_final(hash, password, &bare, &first);
        match s.step(fin.as_bytes())? {
            SaslStep::Done { token, user } => Ok((user, token, server_sig)),
            SaslStep::Challenge(_) => panic!("a third step"),
        }
    }

    #[test]
    fn scram_accepts_the_password_and_proves_the_server() {
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            let (user, token, server_sig) = exchange(hash, "user", "pencil").unwrap();
            assert_eq!(user, "user");
            assert_eq!(token, format!("v={}", B64.encode(server_sig)).into_bytes());
        }
    }

    #[test]
    fn scram_refuses_a_wrong_password_or_unknown_user() {
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            let e = exchange(hash, "user", "pencils").unwrap_err();
            assert!(e.contains("invalid credentials"), "{e}");
            let e = exchange(hash, "nobody", "pencil").unwrap_err();
            assert!(e.contains("Invalid user credentials"), "{e}");
        }
    }

    /// RFC 7677's SCRAM-SHA-256 example, with the server nonce it gives.
    #[test]
    fn rfc_7677_proof_verifies() {
        let hash = ScramHash::Sha256;
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let cred = credential(hash, "pencil", &salt, 4096);
        let first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let mut s = Scram::new(hash, Box::new(|_| None));
        s.state = ScramState::ClientFinal {
            user: "user".into(),
            gs2_header: "n,,".into(),
            client_first_bare: first_bare.into(),
            server_first: server_first.into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            credential: cred,
        };
        let fin = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let SaslStep::Done { token, .. } = s.step(fin.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(token, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn scram_refuses_what_kafka_refuses() {
        let hash = ScramHash::Sha256;
        let first = |msg: &str| Scram::new(hash, lookup(hash)).step(msg.as_bytes()).err();
        assert!(first("p=tls-unique,,n=user,r=abc")
            .unwrap()
            .contains("channel binding"));
        assert!(first("n,,n=user,r=abc,tokenauth=true")
            .unwrap()
            .contains("delegation"));
        assert!(first("n,a=other,n=user,r=abc").unwrap().contains("Authzid"));
        assert!(first("n,,n=us=er,r=abc").unwrap().contains("bad user name"));
        assert!(first("n,,n=user").unwrap().contains("no nonce"));
        assert!(first("n,a=user,n=user,r=abc").is_none());
        assert_eq!(unescape("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
    }

    proptest::proptest! {
        /// Whatever an unauthenticated client sends, each step answers or
        /// refuses; none panics.
        #[test]
        fn any_tokens_are_answered_or_refused(
            first in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            second in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            user in "[a-z=,]{0,8}",
        ) {
            let hash = ScramHash::Sha512;
            let mut s = Scram::new(hash, lookup(hash));
            let _ = s.step(&first);
            let _ = s.step(&second);
            let mut s = Scram::new(hash, lookup(hash));
            if s.step(format!("n,,n={user},r=abc").as_bytes()).is_ok() {
                let _ = s.step(&second);
                let _ = s.step(&first);
            }
            let users = Arc::new(PlainUsers::parse("u:p").unwrap());
            let _ = Plain::new(users).step(&first);
        }
    }

    #[test]
    fn plain_checks_user_password_and_authzid() {
        let users =
            Arc::new(PlainUsers::parse("# admins\nalice:s3cret:with:colons\n\nbob:pw\n").unwrap());
        let mut p = Plain::new(users.clone());
        let ok = p.step(&plain_token("alice", "s3cret:with:colons")).unwrap();
        assert!(matches!(ok, SaslStep::Done { user, .. } if user == "alice"));
        let fail = |t: &[u8]| Plain::new(users.clone()).step(t).err().unwrap();
        assert!(fail(&plain_token("alice", "wrong")).contains("Invalid username or password"));
        assert!(fail(&plain_token("carol", "pw")).contains("Invalid username or password"));
        assert!(fail(b"bob\0bob").contains("expected 3 tokens"));
        assert!(fail(b"alice\0bob\0pw").contains("authorization id"));
        assert!(Plain::new(users.clone()).step(b"bob\0bob\0pw").is_ok());
        assert!(PlainUsers::parse("nopassword\n").is_err());
        assert!(PlainUsers::parse("a:1\na:2\n").is_err());
    }
}
