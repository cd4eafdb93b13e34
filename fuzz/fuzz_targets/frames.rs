//! The data mover's frame decoder on arbitrary bytes: it must answer with a request or an
//! error, never panic, whatever an agent (or anyone holding a ticket) sends.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bulwark_transport::frames::decode(data);
});
