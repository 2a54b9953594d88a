//! The MD5 digests SQS returns with sent and received messages, which the SDKs check.

use md5::{Digest, Md5};

use holdfast::{AttributeValue, MessageAttribute};

/// Lower-case hex MD5 of `bytes`.
pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

/// SQS's digest of message attributes: for each attribute in name order, the name and the
/// data type (each as a 4-byte big-endian length and the UTF-8 bytes), a transport byte (1
/// for a string or number, 2 for binary) and the value as length and bytes.
pub(crate) fn md5_of_attributes<'a>(attributes: impl IntoIterator<Item = (&'a str, &'a MessageAttribute)>) -> String {
    let mut sorted: Vec<_> = attributes.into_iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut md5 = Md5::new();
    for (name, attribute) in sorted {
        field(&mut md5, name.as_bytes());
        field(&mut md5, attribute.data_type().as_bytes());
        match attribute.value() {
            AttributeValue::Binary(b) => {
                md5.update([2]);
                field(&mut md5, b);
            }
            AttributeValue::String(s) | AttributeValue::Number(s) => {
                md5.update([1]);
                field(&mut md5, s.as_bytes());
            }
            _ => {}
        }
    }
    hex(&md5.finalize())
}

fn field(md5: &mut Md5, bytes: &[u8]) {
    md5.update(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    md5.update(bytes);
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_digest_is_plain_md5() {
        assert_eq!(md5_hex(b"hello"), "5d41402abc4b2a76b9719d911017c592");
    }

    #[test]
    fn attribute_digest_matches_the_sdks_algorithm() {
        // The layout spelled out byte by byte; scripts/clients/boto3_check.py recomputes the
        // digest independently with Python's hashlib.
        let a = MessageAttribute::string("v");
        let expected = {
            let mut bytes = Vec::new();
            for part in [&b"k"[..], b"String"] {
                bytes.extend((part.len() as u32).to_be_bytes());
                bytes.extend(part);
            }
            bytes.push(1);
            bytes.extend(1u32.to_be_bytes());
            bytes.extend(b"v");
            md5_hex(&bytes)
        };
        assert_eq!(md5_of_attributes([("k", &a)]), expected);
    }
}
