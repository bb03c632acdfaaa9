//! Property tests of the HTTP/1 parsers on arbitrary and mutated input, a bounded number of
//! cases per run: no input panics; a head that is accepted is forwarded as one unambiguous
//! HTTP/1.1 head (it parses again, with the same method, target and framing, one Host, never
//! both Content-Length and Transfer-Encoding); a chunked body re-emitted by the relay is
//! canonical and carries the same data.

use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use webstack_http1::body::{self, BodyState, Chunked};
use webstack_http1::head::{self, Forwarding, Framing, ResponseRewrite};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        // Inputs are cheap; a failure is shown shrunk, but never spends minutes on it.
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

/// Pieces real and hostile request heads are made of.
fn request_head() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just("GET / HTTP/1.1".to_string()),
        Just("POST /p?q=1 HTTP/1.1".to_string()),
        Just("GET http://t/ HTTP/1.1".to_string()),
        Just("OPTIONS * HTTP/1.1".to_string()),
        Just("GET / HTTP/1.0".to_string()),
        Just("CONNECT h:443 HTTP/1.1".to_string()),
        "[A-Z]{1,8} [!-~]{0,20} HTTP/1\\.[01]",
    ];
    let header = prop_oneof![
        Just("Host: a".to_string()),
        Just("Host: b".to_string()),
        Just("Content-Length: 5".to_string()),
        Just("Content-Length: 5, 5".to_string()),
        Just("Content-Length: 6".to_string()),
        Just("Content-Length: -1".to_string()),
        Just("Transfer-Encoding: chunked".to_string()),
        Just("Transfer-Encoding: gzip, chunked".to_string()),
        Just("Transfer-Encoding: chunked, gzip".to_string()),
        Just("Connection: close, X-A".to_string()),
        Just("Connection: keep-alive, upgrade".to_string()),
        Just("Upgrade: websocket".to_string()),
        Just("Expect: 100-continue".to_string()),
        Just("X-Forwarded-For: 1.2.3.4".to_string()),
        Just("X-Request-Id: x".to_string()),
        Just("X-A: b".to_string()),
        Just(" folded".to_string()),
        "[!-~]{1,12}: [ -~]{0,20}",
    ];
    (line, prop::collection::vec(header, 0..12), any::<bool>()).prop_map(
        |(line, headers, bare_lf)| {
            let eol = if bare_lf { "\n" } else { "\r\n" };
            let mut text = line + eol;
            for h in headers {
                text.push_str(&h);
                text.push_str(eol);
            }
            text.push_str(eol);
            text.into_bytes()
        },
    )
}

/// Random bytes mixed into a real head: flipped, inserted, cut.
fn mutated(head: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = head.len().max(1);
    prop::collection::vec((0..len, any::<u8>(), 0u8..3), 0..6).prop_map(move |edits| {
        let mut bytes = head.clone();
        for (at, byte, kind) in edits {
            let at = at.min(bytes.len());
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => bytes.truncate(at.max(1)),
            }
        }
        bytes
    })
}

fn forwarding() -> Forwarding<'static> {
    Forwarding::edge("192.0.2.1".parse().unwrap(), false)
}

/// The framing a forwarded head declares, read back with httparse.
fn reparse(out: &[u8]) -> (String, String, Framing, usize) {
    let mut with_end = out.to_vec();
    with_end.extend_from_slice(b"X-Request-Id: id\r\n\r\n");
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Request::new(&mut headers);
    let status = parsed.parse(&with_end).unwrap_or_else(|e| {
        panic!(
            "forwarded head does not parse ({e}): {:?}",
            String::from_utf8_lossy(out)
        )
    });
    assert!(status.is_complete());
    let mut length = None;
    let mut chunked = false;
    let mut hosts = 0;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            assert!(
                length.is_none(),
                "two Content-Length: {:?}",
                String::from_utf8_lossy(out)
            );
            length = Some(
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            assert!(!chunked, "two Transfer-Encoding");
            assert_eq!(h.value, b"chunked");
            chunked = true;
        }
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    let framing = match (length, chunked) {
        (Some(_), true) => panic!("both framings: {:?}", String::from_utf8_lossy(out)),
        (Some(n), false) => Framing::Length(n),
        (None, true) => Framing::Chunked,
        (None, false) => Framing::Length(0),
    };
    (
        parsed.method.unwrap().to_string(),
        parsed.path.unwrap().to_string(),
        framing,
        hosts,
    )
}

fn check_request(input: &[u8]) {
    let mut out = Vec::new();
    if let Ok(Some(request)) = head::parse_request(input, &mut out, &forwarding()) {
        let (method, target, framing, hosts) = reparse(&out);
        assert_eq!(method.as_bytes(), &out[request.method.clone()]);
        assert_eq!(target.as_bytes(), &out[request.target.clone()]);
        assert_eq!(framing, request.body, "{:?}", String::from_utf8_lossy(&out));
        assert!(hosts <= 1, "{:?}", String::from_utf8_lossy(&out));
        assert!(request.head_len <= input.len());
        assert!(target.starts_with('/') || target == "*", "{target}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_a_request_parser(input in prop::collection::vec(any::<u8>(), 0..512)) {
        check_request(&input);
    }

    #[test]
    fn accepted_request_heads_are_forwarded_unambiguously(input in request_head().prop_flat_map(mutated)) {
        check_request(&input);
    }

    #[test]
    fn arbitrary_responses_never_panic(input in prop::collection::vec(any::<u8>(), 0..512), head_request in any::<bool>(), upgrade in any::<bool>(), http10 in any::<bool>()) {
        let rewrite = ResponseRewrite {
            request_is_head: head_request,
            client_keep_alive: true,
            client_http10: http10,
            request_id: b"id",
            hsts: None,
            request_upgrade: upgrade,
            timing: None,
            own_header: None,
        };
        let mut out = Vec::new();
        let mut text = b"HTTP/1.1 200 OK\r\n".to_vec();
        text.extend_from_slice(&input);
        for bytes in [&input[..], &text[..]] {
            if let Ok(Some(response)) = head::parse_response(bytes, &mut out, &rewrite) {
                assert!(response.head_len <= bytes.len());
                assert!(out.ends_with(b"\r\n\r\n"));
                let mut headers = [httparse::EMPTY_HEADER; 128];
                let mut parsed = httparse::Response::new(&mut headers);
                assert!(parsed.parse(&out).is_ok_and(|s| s.is_complete()), "{:?}", String::from_utf8_lossy(&out));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_chunk_decoder(input in prop::collection::vec(any::<u8>(), 0..512), step in 1usize..64) {
        let mut chunked = Chunked::default();
        for piece in input.chunks(step) {
            let mut piece = piece;
            while !piece.is_empty() && !chunked.is_done() {
                match chunked.advance(piece) {
                    Ok((used, data)) => {
                        if let Some(data) = data {
                            assert!(data.end <= used);
                        }
                        assert!(used > 0 && used <= piece.len());
                        piece = &piece[used..];
                    }
                    Err(_) => return Ok(()),
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_are_re_emitted_canonically(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..6000), 0..6),
        extensions in prop::collection::vec("(;[a-z]{1,5}(=[a-z0-9]{0,5})?)?", 6),
        trailers in prop::collection::vec("[A-Za-z-]{1,8}: [ -~]{0,10}", 0..3),
        split in 1usize..9000,
        uppercase in any::<bool>(),
    ) {
        let mut wire = Vec::new();
        let mut data = Vec::new();
        for (chunk, ext) in chunks.iter().zip(extensions.iter()) {
            let size = if uppercase { format!("{:X}", chunk.len()) } else { format!("{:x}", chunk.len()) };
            wire.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
            data.extend_from_slice(chunk);
        }
        wire.extend_from_slice(b"0\r\n");
        for t in &trailers {
            wire.extend_from_slice(t.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"\r\nNEXT");
        // The first `split` bytes are buffered, the rest still to be read.
        let split = split.min(wire.len());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let (out, left) = runtime.block_on(async {
            let mut src: &[u8] = &wire[split..];
            let mut buf = BytesMut::from(&wire[..split]);
            let mut state = BodyState::new(Framing::Chunked);
            let mut out = Vec::new();
            body::relay(&mut src, &mut buf, &mut state, false, &mut out, b"", Duration::from_secs(1))
                .await
                .unwrap();
            let mut rest = buf.to_vec();
            rest.extend_from_slice(src);
            (out, rest)
        });
        prop_assert_eq!(&left[..], b"NEXT");
        // Canonical: lowercase hex sizes, no extensions, no trailers, one terminator.
        let mut at = 0;
        let mut decoded = Vec::new();
        loop {
            let end = at + out[at..].windows(2).position(|w| w == b"\r\n").unwrap();
            let size_text = std::str::from_utf8(&out[at..end]).unwrap();
            prop_assert!(size_text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{}", size_text);
            let size = usize::from_str_radix(size_text, 16).unwrap();
            at = end + 2;
            if size == 0 {
                prop_assert_eq!(&out[at..], b"\r\n");
                break;
            }
            decoded.extend_from_slice(&out[at..at + size]);
            prop_assert_eq!(&out[at + size..at + size + 2], b"\r\n");
            at += size + 2;
        }
        prop_assert_eq!(decoded, data);
    }
}
