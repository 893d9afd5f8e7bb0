//! Hostile CBOR: absurd declared lengths, deep nesting, random bytes. Each input
//! must be rejected without panicking, and with allocation bounded by the input
//! size (measured per thread by a counting global allocator).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use attestation_verify::{
    AttestationDocument, CheckTime, Error, Policy, TrustedRoot, MAX_DOCUMENT_LEN, MAX_NESTING_DEPTH,
};
use common::{encode_bytes, with_fields, Cose, BASE};

// --- per-thread allocation accounting (tests run on parallel threads) ---

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn track(grow: usize, shrink: usize) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(grow).saturating_sub(shrink);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size(), 0);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        track(0, layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size, layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated at peak (above what was live before) while running `f`.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

/// Parses and (if parsing succeeds) verifies, asserting bounded allocation.
/// Returns the error; hostile inputs never verify.
fn reject(input: &[u8]) -> Error {
    let root = TrustedRoot::aws_nitro().unwrap();
    let policy = Policy::default()
        .check_time(CheckTime::DocumentTimestamp)
        .allow_debug(true);
    let (result, peak) = peak_allocation(|| {
        AttestationDocument::from_bytes(input).and_then(|doc| doc.verify(&root, &policy))
    });
    // Parsing copies each field at most once and verification hashes and parses a
    // handful of certificates; 1 MiB is far above that for a 64 KiB input.
    assert!(
        peak <= 1024 * 1024,
        "allocated {peak} bytes for a {}-byte input",
        input.len()
    );
    match result {
        Ok(_) => panic!("hostile input verified"),
        Err(e) => e,
    }
}

/// CBOR head for `major` type with a 64-bit argument.
fn head64(major: u8, n: u64) -> Vec<u8> {
    let mut v = vec![(major << 5) | 27];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

const HUGE: u64 = 1 << 60;

#[test]
fn absurd_declared_lengths_fail_fast() {
    // At the top level: a bstr, an array, a map, each of 2^60.
    for major in [2, 4, 5] {
        let mut input = head64(major, HUGE);
        input.extend_from_slice(&[0; 64]);
        let err = reject(&input);
        assert!(
            matches!(err, Error::MalformedCbor { .. } | Error::Truncated { .. }),
            "{err:?}"
        );
    }
    // COSE array of 2^60 items.
    let err = reject(&[head64(4, HUGE), vec![0x40; 8]].concat());
    assert!(matches!(err, Error::MalformedCbor { .. }), "{err:?}");

    // Inside the COSE array: protected header, payload and signature claim 2^60 bytes.
    let cose = Cose::decode(&common::document(BASE));
    let mut input = vec![0x84];
    input.extend(head64(2, HUGE));
    input.extend_from_slice(&cose.protected);
    assert_eq!(
        reject(&input),
        Error::Truncated {
            context: "protected header"
        }
    );
    let mut input = vec![0x84];
    input.extend(encode_bytes(&cose.protected));
    input.push(0xa0);
    input.extend(head64(2, HUGE));
    input.extend_from_slice(&cose.payload);
    assert_eq!(reject(&input), Error::Truncated { context: "payload" });

    // Inside the payload: the map itself, a field's bstr, the cabundle array,
    // the pcrs map, and an unknown field's array each claim 2^60.
    let payload_with = |raw_value: Vec<u8>, key: &str| {
        with_fields(&common::document(BASE), |f| f.set(key, raw_value))
    };
    let cases = [
        ("nonce", head64(2, HUGE)),
        ("cabundle", head64(4, HUGE)),
        ("pcrs", head64(5, HUGE)),
        ("future_field", head64(4, HUGE)),
        ("future_field", head64(5, HUGE)),
    ];
    for (key, raw) in cases {
        let err = reject(&payload_with(raw, key));
        assert!(
            matches!(
                err,
                Error::Truncated { .. }
                    | Error::MalformedCbor { .. }
                    | Error::InvalidField { .. }
                    | Error::InvalidPcr { .. }
            ),
            "{key}: {err:?}"
        );
    }
    let mut cose = Cose::decode(&common::document(BASE));
    let mut payload = head64(5, HUGE);
    payload.extend_from_slice(&cose.payload[1..]);
    cose.payload = payload;
    assert!(matches!(reject(&cose.encode()), Error::Truncated { .. }));
}

#[test]
fn deep_nesting_is_refused() {
    // 200,000 nested arrays at the top level: over the size cap, refused unread.
    let mut input = vec![0x81; 200_000];
    input.push(0x00);
    assert_eq!(
        reject(&input),
        Error::InputTooLarge {
            len: 200_001,
            max: MAX_DOCUMENT_LEN
        }
    );
    // As deep as fits under the cap, at the top level and inside the unprotected header.
    let depth = MAX_DOCUMENT_LEN - 100;
    let mut input = vec![0x81; depth];
    input.push(0x00);
    assert!(matches!(reject(&input), Error::MalformedCbor { .. }));
    let mut input = vec![0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa1, 0x00];
    input.extend(std::iter::repeat_n(0x81, depth));
    input.push(0x00);
    assert!(matches!(
        reject(&input),
        Error::NestingTooDeep {
            context: "unprotected header",
            ..
        }
    ));

    // Inside the payload, under an unknown key (the only place nesting is walked):
    // arrays, indefinite maps and tag chains.
    let room = MAX_DOCUMENT_LEN - common::document(BASE).len() - 64;
    let nested_arrays = [vec![0x81; room], vec![0x00]].concat();
    let nested_maps = [[0xbf, 0x00].repeat(room / 2), vec![0x00]].concat();
    let nested_tags = [vec![0xc6; room], vec![0x00]].concat();
    for raw in [nested_arrays, nested_maps, nested_tags] {
        let doc = with_fields(&common::document(BASE), |f| f.set("future_field", raw));
        assert!(doc.len() <= MAX_DOCUMENT_LEN);
        assert_eq!(
            reject(&doc),
            Error::NestingTooDeep {
                context: "payload",
                max: MAX_NESTING_DEPTH
            }
        );
    }
    // Through map keys as well as values: a map whose key is a map whose key is a
    // map... (each level also gets its value, so the bytes are well-formed CBOR).
    let levels = room / 2;
    let nested_keys = [vec![0xa1; levels], vec![0x00; levels + 1]].concat();
    let doc = with_fields(&common::document(BASE), |f| {
        f.set("future_field", nested_keys.clone())
    });
    assert!(doc.len() <= MAX_DOCUMENT_LEN);
    assert_eq!(
        reject(&doc),
        Error::NestingTooDeep {
            context: "payload",
            max: MAX_NESTING_DEPTH
        }
    );
    let mut cose = Cose::decode(&common::document(BASE));
    cose.unprotected_raw = nested_keys;
    assert_eq!(
        reject(&cose.encode()),
        Error::NestingTooDeep {
            context: "unprotected header",
            max: MAX_NESTING_DEPTH
        }
    );

    // A known field with nesting where bytes belong is a plain type error.
    let doc = with_fields(&common::document(BASE), |f| {
        f.set("nonce", [vec![0x81; room], vec![0x00]].concat())
    });
    assert!(matches!(
        reject(&doc),
        Error::MalformedCbor {
            context: "nonce",
            ..
        }
    ));
}

/// A lone break byte (0xff) is not a value. `minicbor`'s own `skip` would consume
/// it, so a parser built on it would read `{0: <break>}` as a complete map where
/// this one (and any strict CBOR decoder) sees malformed input: two readers of
/// the same bytes must not disagree. Every place the parser skips is checked.
#[test]
fn lone_breaks_in_skipped_values_are_malformed() {
    let malformed = |input: Vec<u8>, context: &str| {
        let err = AttestationDocument::from_bytes(&input).unwrap_err();
        assert!(
            matches!(&err, Error::MalformedCbor { context: c, reason }
                if *c == context && reason.contains("break")),
            "{context}: {err:?}"
        );
    };
    // The unprotected header: as a value, as a key, inside a nested array.
    for raw in [
        vec![0xa1, 0x00, 0xff],
        vec![0xa1, 0xff, 0x00],
        vec![0xa1, 0x00, 0x81, 0xff],
    ] {
        let mut cose = Cose::decode(&common::document(BASE));
        cose.unprotected_raw = raw;
        malformed(cose.encode(), "unprotected header");
    }
    // An unknown payload field: the value itself, inside an array, a map, a tag.
    for raw in [
        vec![0xff],
        vec![0x81, 0xff],
        vec![0xa1, 0x00, 0xff],
        vec![0xc6, 0xff],
    ] {
        malformed(
            with_fields(&common::document(BASE), |f| f.set("future_field", raw)),
            "payload",
        );
    }
    // The protected header: an unknown integer label's value, and a non-integer key.
    for protected in [
        vec![0xa2, 0x01, 0x38, 0x22, 0x04, 0xff],
        vec![0xa2, 0x01, 0x38, 0x22, 0xff, 0x00],
    ] {
        let mut cose = Cose::decode(&common::document(BASE));
        cose.protected = protected;
        malformed(cose.encode(), "protected header");
    }
}

/// SplitMix64: a fixed-seed generator so failures reproduce (no `rand` needed).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_megabytes_are_rejected() {
    let mut rng = SplitMix(0x5eed_0001);
    for mb in 1..=4 {
        let input = rng.bytes(mb * 1024 * 1024);
        assert!(matches!(reject(&input), Error::InputTooLarge { .. }));
    }
    // Random inputs under the cap, raw and behind a plausible COSE prefix, so the
    // parser gets past the first byte.
    for i in 0..300 {
        let len = rng.below(MAX_DOCUMENT_LEN);
        let mut input = rng.bytes(len);
        if i % 2 == 0 {
            let prefix = [0xd2, 0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0];
            let n = prefix.len().min(input.len());
            input[..n].copy_from_slice(&prefix[..n]);
        }
        reject(&input);
    }
}

#[test]
fn random_mutations_of_real_documents_never_verify() {
    let docs = common::documents();
    let mut rng = SplitMix(0x5eed_0002);
    for _ in 0..2000 {
        let (_, doc) = &docs[rng.below(docs.len())];
        let mut input = doc.clone();
        for _ in 0..1 + rng.below(8) {
            let pos = rng.below(input.len());
            match rng.below(3) {
                0 => input[pos] ^= 1 << rng.below(8),
                1 => input[pos] = rng.next() as u8,
                _ => input.truncate(pos.max(1)),
            }
        }
        if input == *doc {
            continue;
        }
        reject(&input);
    }
}
