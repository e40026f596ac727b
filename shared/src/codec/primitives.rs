//! The data representations of MQTT section 1.5: integers, variable byte integers,
//! UTF-8 strings and binary data, read from a bounded [`Reader`] and written to a `BytesMut`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::DecodeError;

/// Largest value a variable byte integer can hold.
pub const MAX_VARINT: u32 = 268_435_455;

/// A cursor over one packet's body; every read checks the bounds.
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.remaining() < 1 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.remaining() < 2 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.remaining() < 4 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.get_u32())
    }

    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                // Padded with a zero last byte: not minimal (MQTT-1.5.5-1).
                if i > 0 && byte == 0 {
                    return Err(DecodeError::MalformedLength);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedLength)
    }

    pub fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.remaining() < len {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.split_to(len))
    }

    /// Two-byte length then that many bytes.
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.bytes(len)
    }

    /// Two-byte length then UTF-8 without U+0000.
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        let s = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(DecodeError::NullCharacter);
        }
        Ok(s.to_owned())
    }

    /// Everything left.
    pub fn rest(&mut self) -> Bytes {
        let len = self.buf.remaining();
        self.buf.split_to(len)
    }

    /// Refuses leftover bytes.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            Err(DecodeError::TrailingBytes)
        } else {
            Ok(())
        }
    }
}

/// Bytes a variable byte integer takes.
pub fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub fn put_varint(buf: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Writes a two-byte length and the bytes. Callers keep fields under 65,536 bytes
/// (validated on the way in); longer input is cut, never written with a wrong length.
pub fn put_binary(buf: &mut BytesMut, data: &[u8]) {
    let len = data.len().min(u16::MAX as usize);
    buf.put_u16(len as u16);
    buf.put_slice(&data[..len]);
}

pub fn put_string(buf: &mut BytesMut, s: &str) {
    put_binary(buf, s.as_bytes());
}

/// Encoded size of a string or binary field.
pub fn binary_len(data: &[u8]) -> usize {
    2 + data.len().min(u16::MAX as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip() {
        for v in [
            0usize,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_VARINT as usize,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            let mut r = Reader::new(b.freeze());
            assert_eq!(r.varint().unwrap() as usize, v);
        }
    }

    #[test]
    fn varint_five_bytes_is_malformed() {
        let mut r = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x01]));
        assert_eq!(r.varint(), Err(DecodeError::MalformedLength));
    }

    #[test]
    fn strings_are_checked() {
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xc3, 0x28]));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        let mut r = Reader::new(Bytes::from_static(&[0, 2, b'a', 0]));
        assert_eq!(r.string(), Err(DecodeError::NullCharacter));
        let mut r = Reader::new(Bytes::from_static(&[0, 3, b'a']));
        assert_eq!(r.string(), Err(DecodeError::Truncated));
    }
}
