//! HPACK (RFC 7541): the decoder for request headers, with the dynamic table the client fills,
//! and a static-only encoder for responses (HAProxy's choice): names from the static table,
//! values as raw literals, nothing inserted into the client's table, so encoding a field is a
//! name lookup and two copies, and no response can evict another's fields.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;

use crate::huffman::{self, HuffmanError};

/// RFC 7541 Appendix A.
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// A header block that cannot be decoded: a COMPRESSION_ERROR for the whole connection (the
/// table's state is lost with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpackError {
    /// The block ends inside a representation.
    Truncated,
    /// An integer over 2^28 (no field, index or size needs more).
    Integer,
    /// An index into neither table.
    Index(usize),
    Huffman(HuffmanError),
    /// A table size update over the limit we announced, or after the first field.
    TableSize,
}

impl std::fmt::Display for HpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HpackError::Truncated => f.write_str("header block ends inside a field"),
            HpackError::Integer => f.write_str("integer too large"),
            HpackError::Index(i) => write!(f, "no table entry {i}"),
            HpackError::Huffman(e) => write!(f, "bad Huffman string ({e:?})"),
            HpackError::TableSize => f.write_str("table size update not allowed"),
        }
    }
}

/// One decoded field: where its name and value are in the arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// Shared, so a literal that reuses an entry's name inserts it again without a copy: an
/// instruction of two bytes never costs a copy of a name of four thousand.
struct Entry {
    name: Bytes,
    value: Bytes,
}

impl Entry {
    /// RFC 7541 §4.1: an entry's size counts 32 octets of overhead.
    fn size(&self) -> usize {
        self.name.len() + self.value.len() + 32
    }
}

/// The decoding side of one connection.
pub struct Decoder {
    /// Newest first: entry 62 is `table[0]`.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE as we announced it: no update may go over it.
    limit: usize,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("entries", &self.table.len())
            .field("size", &self.size)
            .field("max_size", &self.max_size)
            .finish()
    }
}

impl Decoder {
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
        }
    }

    /// Decodes one whole header block, appending names and values to `arena` and their places
    /// to `fields`. Returns the header list's size (RFC 9113 §6.5.2: each field's name and
    /// value plus 32). Once that passes `max_list` nothing more is appended (the block is
    /// still decoded to the end, so the table stays in step with the client's), and the
    /// caller answers 431.
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list: usize,
        arena: &mut Vec<u8>,
        fields: &mut Vec<Field>,
    ) -> Result<usize, HpackError> {
        let mut at = 0;
        let mut list = 0;
        let mut first = true;
        // Literal strings are decoded here before they are known to be kept.
        let mut name_buf = Vec::new();
        let mut value_buf = Vec::new();
        while at < block.len() {
            let byte = block[at];
            if byte & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = integer(block, &mut at, 7)?;
                let (name, value) = self.get(index)?;
                list += name.len() + value.len() + 32;
                if list <= max_list {
                    push_field(arena, fields, name, value);
                }
            } else if byte & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the first field.
                if !first {
                    return Err(HpackError::TableSize);
                }
                let size = integer(block, &mut at, 5)?;
                if size > self.limit {
                    return Err(HpackError::TableSize);
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal (§6.2): with incremental indexing (01), without (0000), never
                // indexed (0001).
                let (prefix, insert) = if byte & 0xc0 == 0x40 {
                    (6, true)
                } else {
                    (4, false)
                };
                let index = integer(block, &mut at, prefix)?;
                name_buf.clear();
                value_buf.clear();
                let indexed_name = if index == 0 {
                    string(block, &mut at, &mut name_buf)?;
                    None
                } else {
                    Some(self.name(index)?)
                };
                let name = indexed_name.as_deref().unwrap_or(&name_buf);
                string(block, &mut at, &mut value_buf)?;
                list += name.len() + value_buf.len() + 32;
                if list <= max_list {
                    push_field(arena, fields, name, &value_buf);
                }
                if insert {
                    let name = indexed_name.unwrap_or_else(|| Bytes::copy_from_slice(&name_buf));
                    self.insert(Entry {
                        name,
                        value: Bytes::copy_from_slice(&value_buf),
                    });
                }
            }
            first = false;
        }
        Ok(list)
    }

    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::Index(0)),
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((name.as_bytes(), value.as_bytes()))
            }
            _ => self
                .table
                .get(index - 62)
                .map(|e| (&*e.name, &*e.value))
                .ok_or(HpackError::Index(index)),
        }
    }

    /// The name of entry `index`, shared.
    fn name(&self, index: usize) -> Result<Bytes, HpackError> {
        match index {
            0 => Err(HpackError::Index(0)),
            1..=61 => Ok(Bytes::from_static(STATIC_TABLE[index - 1].0.as_bytes())),
            _ => self
                .table
                .get(index - 62)
                .map(|e| e.name.clone())
                .ok_or(HpackError::Index(index)),
        }
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max_size {
            // Larger than the whole table: it empties the table and is not kept (§4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(entry);
    }

    /// Drops the oldest entries until `room` more fits.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some(old) = self.table.pop_back() else {
                break;
            };
            self.size -= old.size();
        }
    }
}

fn push_field(arena: &mut Vec<u8>, fields: &mut Vec<Field>, name: &[u8], value: &[u8]) {
    let start = arena.len();
    arena.extend_from_slice(name);
    let middle = arena.len();
    arena.extend_from_slice(value);
    fields.push(Field {
        name: start..middle,
        value: middle..arena.len(),
    });
}

/// Reads an integer with an N-bit prefix (§5.1) at `at`, moving past it.
fn integer(block: &[u8], at: &mut usize, prefix: u8) -> Result<usize, HpackError> {
    let mask = (1usize << prefix) - 1;
    let first = *block.get(*at).ok_or(HpackError::Truncated)? as usize & mask;
    *at += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    let mut shift = 0;
    loop {
        let byte = *block.get(*at).ok_or(HpackError::Truncated)? as usize;
        *at += 1;
        value += (byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(HpackError::Integer);
        }
    }
    if value > 1 << 28 {
        return Err(HpackError::Integer);
    }
    Ok(value)
}

/// Reads a string literal (§5.2) at `at` into `out`.
fn string(block: &[u8], at: &mut usize, out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = block.get(*at).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, at, 7)?;
    let end = at.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = block.get(*at..end).ok_or(HpackError::Truncated)?;
    *at = end;
    if huffman {
        huffman::decode(raw, out).map_err(HpackError::Huffman)
    } else {
        out.extend_from_slice(raw);
        Ok(())
    }
}

/// Appends an integer with an N-bit prefix, the first byte's other bits `flags`. Inlined:
/// almost every integer of a response (an index, a length) fits in its first byte.
#[inline]
fn write_integer(out: &mut Vec<u8>, value: usize, prefix: u8, flags: u8) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
    } else {
        write_long_integer(out, value, mask, flags);
    }
}

#[cold]
fn write_long_integer(out: &mut Vec<u8>, mut value: usize, mask: usize, flags: u8) {
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 128 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

#[inline]
fn write_string(out: &mut Vec<u8>, value: &[u8]) {
    write_integer(out, value.len(), 7, 0);
    out.extend_from_slice(value);
}

/// Appends a dynamic table size update (§6.3), which must start the block.
pub fn encode_table_size(out: &mut Vec<u8>, size: usize) {
    write_integer(out, size, 5, 0x20);
}

/// Appends `:status`: one byte for the seven codes of the static table, else a literal.
pub fn encode_status(out: &mut Vec<u8>, status: u16) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if index != 0 {
        out.push(0x80 | index);
        return;
    }
    // Literal without indexing, name :status (8).
    out.push(0x08);
    write_string(out, &itoa_3(status));
}

fn itoa_3(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// Appends a field as a literal that is not indexed (`sensitive`: never indexed, for
/// intermediaries too), its name from the static table when it is there.
pub fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8], sensitive: bool) {
    let flags = if sensitive { 0x10 } else { 0x00 };
    match static_name(name) {
        Some(index) => write_integer(out, index, 4, flags),
        None => {
            out.push(flags);
            write_string(out, name);
        }
    }
    write_string(out, value);
}

/// Appends the fields of an HTTP/1 head as HTTP/2 sends them: names lower-cased, the
/// connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2) left out. `head` is a head a
/// parser has checked and written again: a status line, `Name: value` lines and a blank line,
/// each ending in CRLF; it is read by its colons and line ends (`memchr`), not parsed twice.
pub fn encode_http1_fields(out: &mut Vec<u8>, head: &[u8]) {
    let Some(status_end) = memchr::memchr(b'\n', head) else {
        return;
    };
    // A field's representation is rarely longer than its line (a name's index or a length
    // takes the room of ": " and CRLF; a value of 255 bytes and more takes one byte more):
    // one reservation for the block, nearly always enough.
    out.reserve(head.len() - status_end);
    let mut at = status_end + 1;
    let mut lower = [0u8; NAME_ROOM];
    // Up to the blank line (every line before it has a colon: the head was written so).
    while !matches!(head.get(at), None | Some(b'\r' | b'\n')) {
        let name_start = at;
        let Some(colon) = lower_case_name(head, name_start, &mut lower) else {
            return;
        };
        let line_end = memchr::memchr(b'\n', &head[colon..]).map_or(head.len(), |i| colon + i);
        let value = head[colon + 1..line_end].trim_ascii();
        at = line_end + 1;
        let owned;
        let name = match lower.get(..colon - name_start) {
            Some(name) => name,
            None => {
                owned = head[name_start..colon].to_ascii_lowercase();
                &owned[..]
            }
        };
        if !is_connection_specific(name) {
            encode_field(out, name, value, false);
        }
    }
}

/// The longest name lower-cased on the stack (longer ones are rare: a `Vec`).
const NAME_ROOM: usize = 64;

/// Finds the colon that ends the name starting at `head[start]` and lower-cases the name into
/// `room` on the way, eight bytes at a time (field names are ASCII; what lands in `room` past
/// the name is not used). Returns the colon's index (None if the line ends first); a name
/// longer than `room` is found but left to the caller to lower-case.
fn lower_case_name(head: &[u8], start: usize, room: &mut [u8; NAME_ROOM]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut i = 0;
    while let Some(chunk) = head.get(start + i..start + i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        if let Some(slot) = room.get_mut(i..i + 8) {
            slot.copy_from_slice(&ascii_lower_8(word).to_le_bytes());
        }
        let stops = zero_bytes(word ^ (u64::from(b':') * ONES))
            | zero_bytes(word ^ (u64::from(b'\n') * ONES));
        if stops != 0 {
            // The lowest flag is exact (little-endian: the first byte in memory).
            let at = start + i + (stops.trailing_zeros() / 8) as usize;
            return (head[at] == b':').then_some(at);
        }
        i += 8;
    }
    // The head's last bytes: one at a time.
    for (at, &byte) in head.iter().enumerate().skip(start + i) {
        match byte {
            b':' => return Some(at),
            b'\n' => return None,
            _ => {}
        }
        if let Some(slot) = room.get_mut(at - start) {
            *slot = byte.to_ascii_lowercase();
        }
    }
    None
}

/// The high bit of each zero byte of `word` set (and maybe of bytes after the first zero).
pub(crate) fn zero_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    word.wrapping_sub(ONES) & !word & (0x80 * ONES)
}

/// Eight bytes with every ASCII upper-case letter lower-cased, the rest unchanged (SWAR: a
/// byte's high bit marks `>= 'A'` and `> 'Z'` after an add that cannot carry across bytes).
fn ascii_lower_8(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x80 * ONES;
    let low7 = word & !HIGH;
    let at_least_a = low7 + (0x80 - u64::from(b'A')) * ONES;
    let above_z = low7 + (0x7f - u64::from(b'Z')) * ONES;
    let upper = at_least_a & !above_z & !word & HIGH;
    word | (upper >> 2)
}

/// Fields that describe one HTTP/1 connection, which HTTP/2 forbids (RFC 9113 §8.2.2).
pub fn is_connection_specific(lower_name: &[u8]) -> bool {
    matches!(
        lower_name,
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
    )
}

/// The static table's index of a (lower-case) regular field name (pseudo-fields are never
/// encoded from here): by length first, so a name is compared with a few of the same length.
fn static_name(name: &[u8]) -> Option<usize> {
    Some(match name.len() {
        3 => match name {
            b"age" => 21,
            b"via" => 60,
            _ => return None,
        },
        4 => match name {
            b"date" => 33,
            b"etag" => 34,
            b"vary" => 59,
            b"from" => 37,
            b"host" => 38,
            b"link" => 45,
            _ => return None,
        },
        5 => match name {
            b"allow" => 22,
            b"range" => 50,
            _ => return None,
        },
        6 => match name {
            b"server" => 54,
            b"accept" => 19,
            b"cookie" => 32,
            b"expect" => 35,
            _ => return None,
        },
        7 => match name {
            b"expires" => 36,
            b"referer" => 51,
            b"refresh" => 52,
            _ => return None,
        },
        8 => match name {
            b"location" => 46,
            b"if-match" => 39,
            b"if-range" => 42,
            _ => return None,
        },
        10 => match name {
            b"set-cookie" => 55,
            b"user-agent" => 58,
            _ => return None,
        },
        11 => match name {
            b"retry-after" => 53,
            _ => return None,
        },
        12 => match name {
            b"content-type" => 31,
            b"max-forwards" => 47,
            _ => return None,
        },
        13 => match name {
            b"cache-control" => 24,
            b"last-modified" => 44,
            b"accept-ranges" => 18,
            b"authorization" => 23,
            b"content-range" => 30,
            b"if-none-match" => 41,
            _ => return None,
        },
        14 => match name {
            b"content-length" => 28,
            b"accept-charset" => 15,
            _ => return None,
        },
        15 => match name {
            b"accept-encoding" => 16,
            b"accept-language" => 17,
            _ => return None,
        },
        16 => match name {
            b"content-encoding" => 26,
            b"content-language" => 27,
            b"content-location" => 29,
            b"www-authenticate" => 61,
            _ => return None,
        },
        17 => match name {
            b"if-modified-since" => 40,
            b"transfer-encoding" => 57,
            _ => return None,
        },
        18 => match name {
            b"proxy-authenticate" => 48,
            _ => return None,
        },
        19 => match name {
            b"content-disposition" => 25,
            b"if-unmodified-since" => 43,
            b"proxy-authorization" => 49,
            _ => return None,
        },
        25 => match name {
            b"strict-transport-security" => 56,
            _ => return None,
        },
        27 => match name {
            b"access-control-allow-origin" => 20,
            _ => return None,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let (mut arena, mut fields) = (Vec::new(), Vec::new());
        decoder
            .decode(block, usize::MAX, &mut arena, &mut fields)
            .unwrap();
        fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8(arena[f.name.clone()].to_vec()).unwrap(),
                    String::from_utf8(arena[f.value.clone()].to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_rfc_request_examples_with_huffman_decode_and_fill_the_table() {
        // RFC 7541 C.4: three requests on one connection.
        let mut decoder = Decoder::new(4096);
        let first = decode_all(
            &mut decoder,
            &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
        );
        assert_eq!(
            first,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(decoder.size, 57);
        let second = decode_all(&mut decoder, &hex("8286 84be 5886 a8eb 1064 9cbf"));
        assert_eq!(
            second,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        let third = decode_all(
            &mut decoder,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        );
        assert_eq!(
            third,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(decoder.size, 164);
        assert_eq!(decoder.table.len(), 3);
    }

    #[test]
    fn a_small_table_evicts_the_oldest_entries() {
        // RFC 7541 C.5 (responses, table of 256): the third response evicts.
        let mut decoder = Decoder::new(256);
        decode_all(
            &mut decoder,
            &hex(
                "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            ),
        );
        assert_eq!(decoder.size, 222);
        decode_all(&mut decoder, &hex("4803 3330 37c1 c0bf"));
        assert_eq!(decoder.size, 222);
        assert_eq!(decoder.table.len(), 4);
    }

    #[test]
    fn bad_blocks_are_compression_errors() {
        let mut decoder = Decoder::new(4096);
        let mut bad = |block: &[u8]| {
            decoder
                .decode(block, usize::MAX, &mut Vec::new(), &mut Vec::new())
                .unwrap_err()
        };
        assert_eq!(bad(&[0x80]), HpackError::Index(0));
        assert_eq!(bad(&[0xbe]), HpackError::Index(62));
        assert_eq!(bad(&[0x41, 0x05, b'a']), HpackError::Truncated);
        assert_eq!(
            bad(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            HpackError::Integer
        );
        // A size update over the limit, and one after a field.
        assert_eq!(bad(&[0x3f, 0xe2, 0x1f]), HpackError::TableSize);
        assert_eq!(bad(&[0x82, 0x20]), HpackError::TableSize);
    }

    #[test]
    fn an_oversized_list_is_measured_but_not_kept_and_the_table_stays_in_step() {
        let mut decoder = Decoder::new(4096);
        // Literal with indexing, new name "a", value 100 x 'x'.
        let mut block = vec![0x40, 0x01, b'a', 100];
        block.extend(std::iter::repeat_n(b'x', 100));
        let (mut arena, mut fields) = (Vec::new(), Vec::new());
        let size = decoder.decode(&block, 50, &mut arena, &mut fields).unwrap();
        assert_eq!(size, 133);
        assert!(fields.is_empty() && arena.is_empty());
        // The entry is in the table all the same: index 62 refers to it.
        assert_eq!(
            decode_all(&mut decoder, &[0xbe]),
            pairs(&[("a", &"x".repeat(100))])
        );
    }

    #[test]
    fn the_encoder_writes_what_the_decoder_reads_and_inserts_nothing() {
        let mut out = Vec::new();
        encode_status(&mut out, 200);
        encode_status(&mut out, 302);
        encode_field(&mut out, b"content-type", b"text/html", false);
        encode_field(&mut out, b"x-request-id", b"abc", true);
        encode_field(&mut out, b"accept-ranges", b"bytes", false);
        encode_field(&mut out, b"x-long", "v".repeat(300).as_bytes(), false);
        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decode_all(&mut decoder, &out),
            pairs(&[
                (":status", "200"),
                (":status", "302"),
                ("content-type", "text/html"),
                ("x-request-id", "abc"),
                ("accept-ranges", "bytes"),
                ("x-long", &"v".repeat(300)),
            ])
        );
        assert_eq!(decoder.table.len(), 0);
        // Never indexed: 0001 with the name's index.
        assert!(out.windows(4).any(|w| w == [0x10, 0x0c, b'x', b'-']));
    }

    #[test]
    fn an_http1_head_is_encoded_lower_case_without_its_connection_fields() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: keep-alive\r\n\
            Transfer-Encoding: chunked\r\nX-Empty:\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
            X-Colon: a:b \r\n\r\n";
        let mut out = Vec::new();
        encode_http1_fields(&mut out, head);
        let long = format!("HTTP/1.1 200 OK\r\n{}: v\r\n\r\n", "X".repeat(100));
        encode_http1_fields(&mut out, long.as_bytes());
        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decode_all(&mut decoder, &out),
            pairs(&[
                ("content-type", "text/html"),
                ("x-empty", ""),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("x-colon", "a:b"),
                (&"x".repeat(100), "v"),
            ])
        );
    }

    #[test]
    fn every_regular_name_of_the_static_table_is_found_and_nothing_else() {
        for (i, (name, _)) in STATIC_TABLE.iter().enumerate() {
            let found = static_name(name.as_bytes());
            if name.starts_with(':') {
                assert_eq!(found, None, "{name}");
            } else {
                assert_eq!(found, Some(i + 1), "{name}");
            }
        }
        for name in ["", "x-request-id", "dates", "etags", "content-typ", "Date"] {
            assert_eq!(static_name(name.as_bytes()), None, "{name}");
        }
    }

    #[test]
    fn eight_bytes_at_once_lower_case_what_a_byte_loop_does() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        for chunk in bytes.chunks(8).chain([&b"@AZ[`az{"[..]]) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap());
            let expected: Vec<u8> = chunk.iter().map(u8::to_ascii_lowercase).collect();
            assert_eq!(&ascii_lower_8(word).to_le_bytes()[..], &expected[..]);
        }
        let mut room = [0u8; NAME_ROOM];
        let name = "X-Long-Field-Name-Of-Sixty-Four-Bytes-Or-So-ABCDEFGHIJKLMNOPQRST";
        assert_eq!(name.len(), NAME_ROOM);
        for cut in 0..=NAME_ROOM {
            let head = format!("{}: v:w\r\n", &name[..cut]);
            assert_eq!(lower_case_name(head.as_bytes(), 0, &mut room), Some(cut));
            assert_eq!(&room[..cut], name[..cut].to_ascii_lowercase().as_bytes());
            // At the head's end, the last bytes one at a time.
            let head = format!("{}:", &name[..cut]);
            assert_eq!(lower_case_name(head.as_bytes(), 0, &mut room), Some(cut));
            assert_eq!(&room[..cut], name[..cut].to_ascii_lowercase().as_bytes());
        }
        let long = format!("{}: v", "Y".repeat(NAME_ROOM + 9));
        assert_eq!(
            lower_case_name(long.as_bytes(), 0, &mut room),
            Some(NAME_ROOM + 9)
        );
        assert_eq!(lower_case_name(b"Server", 0, &mut room), None);
        // A line without a colon ends the name search (the head's end is near).
        assert_eq!(lower_case_name(b"Foo\r\nBar: x", 0, &mut room), None);
        assert_eq!(
            lower_case_name(b"Foo-Bar-Baz\r\nQux: x", 0, &mut room),
            None
        );
        assert_eq!(lower_case_name(b"Fo\nx: y", 0, &mut room), None);
        assert_eq!(
            lower_case_name(b"A: b\r\nServer: x", 6, &mut room),
            Some(12)
        );
    }

    #[test]
    fn a_head_cut_short_encodes_the_fields_it_has() {
        let mut decoder = Decoder::new(4096);
        for (head, expected) in [
            (&b"HTTP/1.1 200 OK"[..], vec![]),
            (b"HTTP/1.1 200 OK\r\nDate: x", pairs(&[("date", "x")])),
            (
                b"HTTP/1.1 200 OK\r\nDate: x\r\nServer",
                pairs(&[("date", "x")]),
            ),
            (
                b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\nB: 2\r\n",
                pairs(&[("a", "1")]),
            ),
        ] {
            let mut out = Vec::new();
            encode_http1_fields(&mut out, head);
            assert_eq!(decode_all(&mut decoder, &out), expected);
        }
    }

    proptest::proptest! {
        #[test]
        fn http1_fields_come_out_as_they_went_in(
            fields in proptest::collection::vec(
                ("[A-Za-z][A-Za-z0-9-]{0,80}", "[ -~]{0,40}"),
                0..12,
            )
        ) {
            let mut head = String::from("HTTP/1.1 200 OK\r\n");
            for (name, value) in &fields {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let mut out = Vec::new();
            encode_http1_fields(&mut out, head.as_bytes());
            let expected: Vec<(String, String)> = fields
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.trim_ascii().to_string()))
                .filter(|(n, _)| !is_connection_specific(n.as_bytes()))
                .collect();
            proptest::prop_assert_eq!(decode_all(&mut Decoder::new(4096), &out), expected);
        }

        #[test]
        fn any_block_decodes_or_fails_without_panicking(block in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            let mut decoder = Decoder::new(256);
            let _ = decoder.decode(&block, 1000, &mut Vec::new(), &mut Vec::new());
            proptest::prop_assert!(decoder.size <= 256);
        }
    }
}
