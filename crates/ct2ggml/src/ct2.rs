//! Reader for CTranslate2's `model.bin` (binary version 6), possibly split into
//! `model.bin.part1..N` files that are read as one concatenated stream.
//!
//! Layout (CTranslate2 `src/models/model.cc`, `Model::load`; all integers little-endian):
//! `u32 version` (= 6), string spec name, `u32 spec revision`, `u32 variable count`, then per
//! variable: string name, `u8 rank`, `rank × u32 dims`, `u8 dtype`, `u32 byte count`, raw data;
//! then `u32 alias count` and (alias, target) string pairs. A string is a `u16` length that
//! includes a trailing NUL, then the bytes.
//!
//! Only an index (name → dims, dtype, offset) is kept in memory; tensor data is read on demand
//! with a seek, so a model is never held in memory whole.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

use crate::ConvertError;

/// CTranslate2 element types (`DataType` in `include/ctranslate2/types.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 8-bit signed integer.
    I8,
    /// 16-bit signed integer.
    I16,
    /// 32-bit signed integer.
    I32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl DType {
    fn from_u8(v: u8) -> Option<DType> {
        Some(match v {
            0 => DType::F32,
            1 => DType::I8,
            2 => DType::I16,
            3 => DType::I32,
            4 => DType::F16,
            5 => DType::Bf16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 | DType::F16 | DType::Bf16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }
}

/// Where one variable lives in the concatenated stream.
#[derive(Debug, Clone)]
pub struct Var {
    /// Shape, outermost first (row-major).
    pub dims: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// Byte offset of the data in the concatenated stream.
    pub offset: u64,
    /// Byte length of the data.
    pub nbytes: u64,
}

impl Var {
    /// Number of elements (product of dims; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
}

/// Several files read as one seekable stream.
pub struct Concat {
    files: Vec<(File, u64, u64)>, // (file, start offset, length)
    total: u64,
    pos: u64,
}

impl Concat {
    fn open(paths: &[PathBuf]) -> Result<Concat, ConvertError> {
        let mut files = Vec::new();
        let mut start = 0;
        for p in paths {
            let f = File::open(p)
                .map_err(|e| ConvertError::io(format!("opening {}", p.display()), e))?;
            let len = f
                .metadata()
                .map_err(|e| ConvertError::io(format!("stat {}", p.display()), e))?
                .len();
            files.push((f, start, len));
            start += len;
        }
        Ok(Concat {
            files,
            total: start,
            pos: 0,
        })
    }
}

impl Read for Concat {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        for (f, start, len) in &mut self.files {
            if self.pos >= *start && self.pos < *start + *len {
                let within = self.pos - *start;
                f.seek(SeekFrom::Start(within))?;
                let max = ((*len - within) as usize).min(buf.len());
                let n = f.read(&mut buf[..max])?;
                self.pos += n as u64;
                return Ok(n);
            }
        }
        Ok(0)
    }
}

impl Seek for Concat {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.total as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

/// An opened CTranslate2 model: its index plus the stream to read data from.
pub struct Model {
    /// Spec name without the NUL, e.g. `WhisperSpec`.
    pub spec: String,
    /// Variables by name (aliases resolved to their targets' entries).
    pub vars: HashMap<String, Var>,
    reader: BufReader<Concat>,
}

fn truncated(e: io::Error) -> ConvertError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ConvertError::Malformed("model.bin is truncated".into())
    } else {
        ConvertError::io("reading model.bin", e)
    }
}

fn read_u8(r: &mut impl Read) -> Result<u8, ConvertError> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b).map_err(truncated)?;
    Ok(b[0])
}

fn read_u16(r: &mut impl Read) -> Result<u16, ConvertError> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b).map_err(truncated)?;
    Ok(u16::from_le_bytes(b))
}

fn read_u32(r: &mut impl Read) -> Result<u32, ConvertError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(truncated)?;
    Ok(u32::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> Result<String, ConvertError> {
    let n = read_u16(r)? as usize;
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).map_err(truncated)?;
    if b.last() == Some(&0) {
        b.pop();
    }
    String::from_utf8(b).map_err(|_| ConvertError::Malformed("name is not UTF-8".into()))
}

impl Model {
    /// Opens the concatenation of `parts` and reads the index, skipping over the data.
    pub fn open(parts: &[PathBuf]) -> Result<Model, ConvertError> {
        let concat = Concat::open(parts)?;
        let total = concat.total;
        let mut r = BufReader::with_capacity(1 << 16, concat);
        let version = read_u32(&mut r)?;
        if version != 6 {
            return Err(ConvertError::BadVersion(version));
        }
        let spec = read_string(&mut r)?;
        let _revision = read_u32(&mut r)?;
        let count = read_u32(&mut r)?;
        let mut vars = HashMap::with_capacity(count as usize);
        for _ in 0..count {
            let name = read_string(&mut r)?;
            let rank = read_u8(&mut r)?;
            let dims = (0..rank)
                .map(|_| read_u32(&mut r).map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            let dt = read_u8(&mut r)?;
            let dtype = DType::from_u8(dt).ok_or_else(|| ConvertError::UnexpectedDtype {
                name: name.clone(),
                dtype: format!("code {dt}"),
            })?;
            let nbytes = read_u32(&mut r)? as u64;
            let offset = r
                .stream_position()
                .map_err(|e| ConvertError::io("seek", e))?;
            let numel: usize = dims.iter().product();
            if (numel * dtype.size()) as u64 != nbytes {
                return Err(ConvertError::Malformed(format!(
                    "{name}: {nbytes} bytes for shape {dims:?} of {dtype:?}"
                )));
            }
            if offset + nbytes > total {
                return Err(ConvertError::Malformed("model.bin is truncated".into()));
            }
            r.seek_relative(nbytes as i64)
                .map_err(|e| ConvertError::io("seek", e))?;
            vars.insert(
                name,
                Var {
                    dims,
                    dtype,
                    offset,
                    nbytes,
                },
            );
        }
        // Aliases (e.g. decoder/projection/weight → decoder/embeddings/weight). Older files may end
        // without the alias section.
        let pos = r
            .stream_position()
            .map_err(|e| ConvertError::io("seek", e))?;
        if pos < total {
            let n_alias = read_u32(&mut r)?;
            for _ in 0..n_alias {
                let alias = read_string(&mut r)?;
                let target = read_string(&mut r)?;
                if let Some(v) = vars.get(&target).cloned() {
                    vars.insert(alias, v);
                }
            }
        }
        Ok(Model {
            spec,
            vars,
            reader: r,
        })
    }

    /// Looks a variable up, or fails with [`ConvertError::MissingTensor`].
    pub fn var(&self, name: &str) -> Result<&Var, ConvertError> {
        self.vars
            .get(name)
            .ok_or_else(|| ConvertError::MissingTensor(name.to_string()))
    }

    /// Reads `len` bytes starting `skip` bytes into variable `name`'s data.
    pub fn read_bytes(
        &mut self,
        name: &str,
        skip: u64,
        len: usize,
    ) -> Result<Vec<u8>, ConvertError> {
        let v = self.var(name)?.clone();
        assert!(skip + len as u64 <= v.nbytes, "read past {name}");
        self.reader
            .seek(SeekFrom::Start(v.offset + skip))
            .map_err(|e| ConvertError::io("seek", e))?;
        let mut buf = vec![0u8; len];
        self.reader.read_exact(&mut buf).map_err(truncated)?;
        Ok(buf)
    }

    /// Reads an integer scalar (i8, i16 or i32), e.g. `encoder/num_heads`.
    pub fn read_int_scalar(&mut self, name: &str) -> Result<i64, ConvertError> {
        let v = self.var(name)?.clone();
        let b = self.read_bytes(name, 0, v.nbytes as usize)?;
        Ok(match (v.dtype, b.len()) {
            (DType::I8, 1) => b[0] as i8 as i64,
            (DType::I16, 2) => i16::from_le_bytes([b[0], b[1]]) as i64,
            (DType::I32, 4) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => {
                return Err(ConvertError::UnexpectedDtype {
                    name: name.to_string(),
                    dtype: format!("{:?} {:?} (expected an integer scalar)", v.dtype, v.dims),
                })
            }
        })
    }
}
