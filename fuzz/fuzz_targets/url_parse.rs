//! Arbitrary strings into the backend URL parsers `tidemark::open` uses
//! (`memory://`, `postgres://`, `s3://`): they must never panic, only
//! accept or refuse with an error; an accepted configuration must also
//! pass or fail its own validation without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_backend_memory::MemoryBackend;
use tidemark_backend_postgres::PostgresConfig;
use tidemark_backend_s3::S3Config;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    // The same dispatch as `tidemark::open`: by the scheme of a parsed URL.
    let Ok(parsed) = url::Url::parse(text) else {
        return;
    };
    match parsed.scheme() {
        "memory" => {
            // SUBTLE: the registry keeps a (small, empty) store per accepted
            // name for the life of the process; libFuzzer's RSS limit bounds
            // what a long run can accumulate.
            let _ = MemoryBackend::from_url(text);
        }
        "postgres" | "postgresql" => {
            if let Ok(config) = PostgresConfig::from_url(text) {
                let _ = config.validate();
                let _ = format!("{config:?}");
            }
        }
        "s3" => {
            if let Ok(config) = S3Config::from_url(text) {
                let _ = config.validate();
                let _ = format!("{config:?}");
            }
        }
        _ => {}
    }
});
