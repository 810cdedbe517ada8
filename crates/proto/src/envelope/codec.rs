//! Bounds-checked reading and writing of envelope fields.
//!
//! Every read names the field it was reading, so a truncated envelope is
//! refused with an error that says where it ended; nothing here can panic on
//! short input.

use super::EnvelopeError;
use crate::ids::{KeyId, KeyPrefix, ID_LEN};

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn slice(&self, start: usize, end: usize) -> &'a [u8] {
        &self.buf[start..end]
    }

    pub(crate) fn take(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&'a [u8], EnvelopeError> {
        if self.remaining() < n {
            return Err(EnvelopeError::Truncated {
                field,
                needed: n - self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], EnvelopeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, EnvelopeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, EnvelopeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, EnvelopeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, EnvelopeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A key id: one length byte (must be 29) and the ASCII id.
    pub(crate) fn key_id(
        &mut self,
        field: &'static str,
        want: KeyPrefix,
    ) -> Result<KeyId, EnvelopeError> {
        let len = self.u8(field)? as usize;
        if len != ID_LEN {
            return Err(EnvelopeError::BadKeyId {
                field,
                reason: format!("length byte is {len}, must be {ID_LEN}"),
            });
        }
        let raw = self.take(len, field)?;
        let text = std::str::from_utf8(raw).map_err(|_| EnvelopeError::BadKeyId {
            field,
            reason: "not ASCII".into(),
        })?;
        let id = KeyId::parse(text).map_err(|e| EnvelopeError::BadKeyId {
            field,
            reason: e.to_string(),
        })?;
        if id.prefix() != want {
            return Err(EnvelopeError::WrongIdKind { field });
        }
        Ok(id)
    }

    /// Magic, version, kind and suite; checks each.
    pub(crate) fn preamble(
        &mut self,
        kind: u8,
        kind_name: &'static str,
    ) -> Result<(), EnvelopeError> {
        if self.take(4, "magic")? != super::MAGIC {
            return Err(EnvelopeError::BadMagic);
        }
        let version = self.u8("version")?;
        if version != super::VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        let found = self.u8("kind")?;
        if found != kind {
            return Err(EnvelopeError::WrongKind {
                expected: kind_name,
                found,
            });
        }
        let suite = self.u16("suite")?;
        if suite != super::SUITE_X25519_SHA256_CHACHA {
            return Err(EnvelopeError::UnknownSuite(suite));
        }
        Ok(())
    }

    pub(crate) fn finish(&self) -> Result<(), EnvelopeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(EnvelopeError::TrailingBytes(n)),
        }
    }
}

pub(crate) fn put_key_id(out: &mut Vec<u8>, id: &KeyId) {
    out.push(ID_LEN as u8);
    out.extend_from_slice(id.as_str().as_bytes());
}

pub(crate) fn put_preamble(out: &mut Vec<u8>, kind: u8) {
    out.extend_from_slice(&super::MAGIC);
    out.push(super::VERSION);
    out.push(kind);
    out.extend_from_slice(&super::SUITE_X25519_SHA256_CHACHA.to_be_bytes());
}
