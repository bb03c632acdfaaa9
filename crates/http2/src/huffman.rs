//! HPACK's Huffman code (RFC 7541 Appendix B): decoding request fields, and encoding for tests.
//!
//! The code table is the RFC's, as generated into the h2 crate's `hpack/huffman/table.rs`
//! (MIT licence, copyright the h2 authors). The code is canonical: codes of one length are
//! consecutive numbers in symbol order, which is what the decoder relies on.

const ENCODE_CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

const ENCODE_CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// The code of EOS (symbol 256): never valid inside a string, its prefix pads the last byte.
const EOS_CODE: u32 = 0x3fff_ffff;
const EOS_LENGTH: u8 = 30;

#[cfg(test)]
fn code_of(symbol: usize) -> (u32, u8) {
    if symbol == 256 {
        (EOS_CODE, EOS_LENGTH)
    } else {
        (ENCODE_CODES[symbol], ENCODE_CODE_LENGTHS[symbol])
    }
}

/// Symbols whose code is at most 8 bits, by the next 8 input bits: `symbol << 4 | length`, 0
/// where no such code starts those bits.
static SHORT: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut symbol = 0;
    while symbol < 256 {
        let (code, length) = (ENCODE_CODES[symbol], ENCODE_CODE_LENGTHS[symbol]);
        if length <= 8 {
            let first = (code << (8 - length)) as usize;
            let mut low = 0;
            while low < 1 << (8 - length) {
                table[first | low] = ((symbol as u16) << 4) | length as u16;
                low += 1;
            }
        }
        symbol += 1;
    }
    table
};

/// The canonical code by length: the first code of each length, how many there are, and
/// where their symbols start in `SORTED`.
struct Canonical {
    first: [u32; 31],
    count: [u32; 31],
    offset: [u16; 31],
    sorted: [u16; 257],
}

static CANONICAL: Canonical = {
    let mut table = Canonical {
        first: [0; 31],
        count: [0; 31],
        offset: [0; 31],
        sorted: [0; 257],
    };
    let mut next = 0;
    let mut length = 1;
    while length <= 30 {
        table.offset[length] = next as u16;
        let mut symbol = 0;
        while symbol <= 256 {
            let (code, l) = if symbol == 256 {
                (EOS_CODE, EOS_LENGTH)
            } else {
                (ENCODE_CODES[symbol], ENCODE_CODE_LENGTHS[symbol])
            };
            if l as usize == length {
                if table.count[length] == 0 {
                    table.first[length] = code;
                }
                table.count[length] += 1;
                table.sorted[next] = symbol as u16;
                next += 1;
            }
            symbol += 1;
        }
        length += 1;
    }
    table
};

/// A Huffman-coded string that is not one (RFC 7541 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// EOS inside the string.
    Eos,
    /// The last bits are more than 7, or not the EOS prefix (all ones).
    Padding,
}

/// Appends the decoded `src` to `out`.
pub fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    out.reserve(src.len() + src.len() / 2);
    // The next input bits, left-aligned, and how many of them there are.
    let (mut bits, mut have) = (0u64, 0u32);
    let mut input = src.iter();
    loop {
        while have <= 56 {
            let Some(&byte) = input.next() else { break };
            bits |= u64::from(byte) << (56 - have);
            have += 8;
        }
        if have == 0 {
            return Ok(());
        }
        let short = SHORT[(bits >> 56) as usize];
        let length = u32::from(short & 0xf);
        if short != 0 && length <= have {
            out.push((short >> 4) as u8);
            bits <<= length;
            have -= length;
            continue;
        }
        match long_symbol(bits, have) {
            Some((256, _)) => return Err(HuffmanError::Eos),
            Some((symbol, length)) => {
                out.push(symbol as u8);
                bits <<= length;
                have -= length;
            }
            // No whole code left: what remains must be padding.
            None if have <= 7 && bits >> (64 - have) == (1 << have) - 1 => return Ok(()),
            None => return Err(HuffmanError::Padding),
        }
    }
}

/// The symbol of the code of more than 8 bits that starts `bits` (of which `have` are real).
fn long_symbol(bits: u64, have: u32) -> Option<(u16, u32)> {
    let table = &CANONICAL;
    let mut length = 9;
    while length <= 30 && length <= have {
        let value = (bits >> (64 - length)) as u32;
        let (first, count) = (table.first[length as usize], table.count[length as usize]);
        if value >= first && value - first < count {
            let at = table.offset[length as usize] as u32 + value - first;
            return Some((table.sorted[at as usize], length));
        }
        length += 1;
    }
    None
}

#[cfg(test)]
/// Appends the Huffman code of `src` to `out`, padded with the EOS prefix.
pub fn encode(src: &[u8], out: &mut Vec<u8>) {
    let (mut bits, mut have) = (0u64, 0u32);
    for &byte in src {
        let (code, length) = code_of(byte as usize);
        bits = (bits << length) | u64::from(code);
        have += u32::from(length);
        while have >= 8 {
            have -= 8;
            out.push((bits >> have) as u8);
        }
    }
    if have > 0 {
        let pad = 8 - have;
        out.push(((bits << pad) | ((1 << pad) - 1)) as u8);
    }
}

#[cfg(test)]
/// The length of `src`'s Huffman code in bytes.
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src
        .iter()
        .map(|&b| ENCODE_CODE_LENGTHS[b as usize] as usize)
        .sum();
    bits.div_ceil(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(src: &[u8]) {
        let mut coded = Vec::new();
        encode(src, &mut coded);
        assert_eq!(coded.len(), encoded_len(src));
        let mut back = Vec::new();
        decode(&coded, &mut back).unwrap();
        assert_eq!(back, src);
    }

    #[test]
    fn every_octet_and_common_strings_decode_to_themselves() {
        round_trip(&(0..=255u8).collect::<Vec<_>>());
        round_trip(&(0..=255u8).rev().collect::<Vec<_>>());
        for s in [
            "",
            "a",
            "www.example.com",
            "no-cache",
            "custom-key",
            "/index.html?x=1",
        ] {
            round_trip(s.as_bytes());
        }
    }

    #[test]
    fn the_rfc_examples_decode() {
        // RFC 7541 C.4.1: "www.example.com".
        let coded = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        let mut out = Vec::new();
        decode(&coded, &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        // C.6.1: "Mon, 21 Oct 2013 20:13:21 GMT".
        let coded = [
            0xd0, 0x7a, 0xbe, 0x94, 0x10, 0x54, 0xd4, 0x44, 0xa8, 0x20, 0x05, 0x95, 0x04, 0x0b,
            0x81, 0x66, 0xe0, 0x82, 0xa6, 0x2d, 0x1b, 0xff,
        ];
        out.clear();
        decode(&coded, &mut out).unwrap();
        assert_eq!(out, b"Mon, 21 Oct 2013 20:13:21 GMT");
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        // '0' is 00000 (5 bits): padded with zeros instead of ones.
        assert_eq!(decode(&[0x00], &mut Vec::new()), Err(HuffmanError::Padding));
        // A whole byte of padding.
        assert_eq!(
            decode(&[0x07, 0xff], &mut Vec::new()),
            Err(HuffmanError::Padding)
        );
        // EOS itself (30 ones) followed by padding.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new()),
            Err(HuffmanError::Eos)
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_round_trip(src in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            round_trip(&src);
        }

        #[test]
        fn any_input_decodes_or_fails_without_panicking(src in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode(&src, &mut Vec::new());
        }
    }
}
