//! Shared test helpers: the real documents in `tests/data`, and a small COSE/payload
//! re-encoder for building mutated documents from them.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

use minicbor::{Decoder, Encoder};

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The 19 real documents, by file name, in name order.
pub fn documents() -> Vec<(String, Vec<u8>)> {
    let mut docs: Vec<_> = std::fs::read_dir(data_dir())
        .expect("tests/data is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cbor"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("document is readable"))
        })
        .collect();
    docs.sort();
    assert_eq!(docs.len(), 19, "expected the 19 real documents");
    docs
}

pub fn document(name: &str) -> Vec<u8> {
    std::fs::read(data_dir().join(name)).expect("document is readable")
}

pub fn expected_json() -> serde_json::Value {
    let text = std::fs::read_to_string(data_dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

/// A non-debug document with a definite-length payload map, used as the base for mutations.
pub const BASE: &str = "anchorage_turnkey_prod_2025-05-05.cbor";
/// A second non-debug document from a different enclave.
pub const OTHER: &str = "signal_svr2_2023-05-24.cbor";

/// The four COSE_Sign1 items, as raw parts; unprotected header kept as raw CBOR.
#[derive(Clone, Debug)]
pub struct Cose {
    pub tagged: bool,
    pub protected: Vec<u8>,
    pub unprotected_raw: Vec<u8>,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

impl Cose {
    pub fn decode(bytes: &[u8]) -> Self {
        let mut d = Decoder::new(bytes);
        let tagged = d.datatype().unwrap() == minicbor::data::Type::Tag;
        if tagged {
            d.tag().unwrap();
        }
        assert_eq!(d.array().unwrap(), Some(4));
        let protected = d.bytes().unwrap().to_vec();
        let start = d.position();
        d.skip().unwrap();
        let unprotected_raw = bytes[start..d.position()].to_vec();
        let payload = d.bytes().unwrap().to_vec();
        let signature = d.bytes().unwrap().to_vec();
        assert_eq!(d.position(), bytes.len());
        Self {
            tagged,
            protected,
            unprotected_raw,
            payload,
            signature,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        if self.tagged {
            e.tag(minicbor::data::Tag::new(18)).unwrap();
        }
        e.array(4).unwrap().bytes(&self.protected).unwrap();
        let mut out = e.into_writer();
        out.extend_from_slice(&self.unprotected_raw);
        let mut e = Encoder::new(out);
        e.bytes(&self.payload)
            .unwrap()
            .bytes(&self.signature)
            .unwrap();
        e.into_writer()
    }
}

/// The payload map as (key, raw CBOR value) pairs, in document order.
#[derive(Clone, Debug)]
pub struct Fields(pub Vec<(String, Vec<u8>)>);

impl Fields {
    pub fn decode(payload: &[u8]) -> Self {
        let mut d = Decoder::new(payload);
        let mut fields = Vec::new();
        let n = d.map().unwrap();
        let mut i = 0;
        loop {
            match n {
                Some(n) if i == n => break,
                None if d.datatype().unwrap() == minicbor::data::Type::Break => break,
                _ => {}
            }
            let key = d.str().unwrap().to_owned();
            let start = d.position();
            d.skip().unwrap();
            fields.push((key, payload[start..d.position()].to_vec()));
            i += 1;
        }
        Self(fields)
    }

    /// Re-encodes as a definite-length map.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        e.map(self.0.len() as u64).unwrap();
        let mut out = e.into_writer();
        for (key, raw) in &self.0 {
            let mut e = Encoder::new(out);
            e.str(key).unwrap();
            out = e.into_writer();
            out.extend_from_slice(raw);
        }
        out
    }

    pub fn get(&self, key: &str) -> &[u8] {
        &self
            .0
            .iter()
            .find(|(k, _)| k == key)
            .expect("field present")
            .1
    }

    pub fn set(&mut self, key: &str, raw: Vec<u8>) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = raw,
            None => self.0.push((key.to_owned(), raw)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    /// The `cabundle` as a list of DER certificates.
    pub fn cabundle(&self) -> Vec<Vec<u8>> {
        let raw = self.get("cabundle");
        let mut d = Decoder::new(raw);
        let n = d.array().unwrap().unwrap();
        (0..n).map(|_| d.bytes().unwrap().to_vec()).collect()
    }

    pub fn set_cabundle(&mut self, certs: &[Vec<u8>]) {
        let mut e = Encoder::new(Vec::new());
        e.array(certs.len() as u64).unwrap();
        for c in certs {
            e.bytes(c).unwrap();
        }
        self.set("cabundle", e.into_writer());
    }

    pub fn certificate(&self) -> Vec<u8> {
        Decoder::new(self.get("certificate"))
            .bytes()
            .unwrap()
            .to_vec()
    }

    pub fn set_bytes(&mut self, key: &str, value: &[u8]) {
        self.set(key, encode_bytes(value));
    }
}

pub fn encode_bytes(value: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.bytes(value).unwrap();
    e.into_writer()
}

pub fn encode_text(value: &str) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.str(value).unwrap();
    e.into_writer()
}

/// A `pcrs` map: index to value, in the given order.
pub fn encode_pcr_map(pcrs: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.map(pcrs.len() as u64).unwrap();
    for (i, v) in pcrs {
        e.u64(*i).unwrap().bytes(v).unwrap();
    }
    e.into_writer()
}

/// A COSE protected header map with integer labels and values.
pub fn encode_protected(entries: &[(i64, i64)]) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.map(entries.len() as u64).unwrap();
    for (k, v) in entries {
        e.i64(*k).unwrap().i64(*v).unwrap();
    }
    e.into_writer()
}

/// Rebuilds `doc` with its payload fields transformed by `f` (signature unchanged).
pub fn with_fields(doc: &[u8], f: impl FnOnce(&mut Fields)) -> Vec<u8> {
    let mut cose = Cose::decode(doc);
    let mut fields = Fields::decode(&cose.payload);
    f(&mut fields);
    cose.payload = fields.encode();
    cose.encode()
}

/// The timestamp of a real document, from expected.json.
pub fn timestamp_of(name: &str) -> u64 {
    expected_json()[name]["timestamp_ms"].as_u64().unwrap()
}
