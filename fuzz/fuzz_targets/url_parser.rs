//! Fuzzes the input parser: never panics; an accepted YouTube input is always an 11-character
//! id of `[A-Za-z0-9_-]` and the canonical watch URL; an accepted direct URL always passes the
//! fetch policy (so it is on the allow-list and never a non-public address that was not
//! allowed); with a `remote` (HTTP) policy nothing is ever a local file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tubescribe::input::{parse_input, parse_youtube_url, Input, InputPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((id, url)) = parse_youtube_url(s) {
        assert_eq!(id.chars().count(), 11, "{s:?} -> {id:?}");
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(url, format!("https://www.youtube.com/watch?v={id}"));
    }
    let policy = InputPolicy::from_list("127.0.0.1:8080, media.example.org");
    match parse_input(s, &policy) {
        Ok(Input::YouTube { video_id, url }) => {
            assert_eq!(video_id.len(), 11);
            assert_eq!(url, format!("https://www.youtube.com/watch?v={video_id}"));
        }
        Ok(Input::DirectUrl { url }) => {
            policy
                .check_fetch_url(&url)
                .expect("accepted URL must pass the fetch policy");
            let host = url.host_str().unwrap_or_default();
            assert!(
                host == "127.0.0.1" || host == "media.example.org",
                "{s:?} -> {url}"
            );
        }
        Ok(Input::LocalFile { .. }) | Err(_) => {}
    }
    // Over HTTP (`remote`) no input ever becomes a local file.
    let remote = InputPolicy {
        remote: true,
        ..policy
    };
    assert!(
        !matches!(parse_input(s, &remote), Ok(Input::LocalFile { .. })),
        "{s:?} became a local file over HTTP"
    );
});
