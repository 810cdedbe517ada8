//! Fuzzes every parser of untrusted envelope bytes: the public header reader
//! the coordinator runs, the full open an enclave runs, and the response
//! opener a client runs. Any panic, overflow or out-of-bounds read is a bug.
#![no_main]

use std::sync::OnceLock;

use archipelago_proto::envelope::{
    open_request, open_response, peek_header, peek_response_header, Expectations,
    ResponseOpener,
};
use archipelago_proto::SecretKey;
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static (SecretKey, SecretKey) {
    static KEYS: OnceLock<(SecretKey, SecretKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            SecretKey::from_bytes(&[1u8; 32]).unwrap(),
            SecretKey::from_bytes(&[2u8; 32]).unwrap(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (a, b) = keys();
    let _ = peek_header(data);
    let _ = open_request(data, a, &Expectations::default());
    let _ = peek_response_header(data);
    let _ = open_response(data, a, &b.public(), &[0u8; 16]);
    if let Ok(mut o) = ResponseOpener::new(data, a, &b.public(), &[0u8; 16]) {
        let _ = o.open_chunk(data);
    }
});
